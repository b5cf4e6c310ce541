"""Shared fixtures: a tiny random Llama model + ChatML tokenizer saved to disk and loaded through the
same `from_pretrained` path real models use, and tiny SAEs saved and loaded through sae-lens."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
WORDS = ("the a she he they secret kept hid told shared letter friend door night morning cold warm asked "
         "answered quietly openly never always would could not yes no I you we it is was to of and in on "
         "assistant user system help question answer please thanks story river house garden book music "
         "zorblax happy sad calm panic sorry maybe really great idea sure You are helpful hello").split()


def build_tokenizer(path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for w in WORDS + [str(i) for i in range(100)] + list(".,?!:") + ["\n"]:
        vocab.setdefault(w, len(vocab))
    # whole words as single tokens, so a planted marker is exactly one token
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(pattern="\n", behavior="isolated"),
                                                 pre_tokenizers.WhitespaceSplit()])
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    return fast


def build_tiny_model(path: Path, d_model: int = 64, n_layers: int = 4, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(path)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=d_model, intermediate_size=2 * d_model,
                      num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    return path


def save_tiny_sae(path: Path, d_in: int, d_sae: int, hook_name: str, seed: int = 0, arch: str = "standard",
                  W_enc=None, b_enc=None, W_dec=None, **cfg) -> Path:
    """A small SAE in sae-lens's on-disk format (random unless weights are given); `cfg` goes to its config
    (e.g. normalize_activations, rescale_acts_by_decoder_norm)."""
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    meta = SAEMetadata(hook_name=hook_name, prepend_bos=False)
    if arch == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=8, metadata=meta, **cfg))
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta, **cfg))
    with torch.no_grad():
        dec = torch.randn(d_sae, d_in)
        dec /= dec.norm(dim=-1, keepdim=True)
        sae.W_dec.copy_(dec if W_dec is None else W_dec)
        sae.W_enc.copy_(dec.T * 0.5 if W_enc is None else W_enc)
        sae.b_enc.copy_(torch.zeros(d_sae) if b_enc is None else b_enc)
        sae.b_dec.zero_()
    sae.save_model(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from psm_repro.config import ModelConfig
    from psm_repro.core.loading import load_model

    return load_model(ModelConfig(name="tiny", source="path", path=str(tiny_model_dir), device="cpu"))


@pytest.fixture(scope="session")
def tiny_sae_dir(tmp_path_factory) -> Path:
    return save_tiny_sae(tmp_path_factory.mktemp("tiny_sae"), 64, 256, "blocks.2.hook_resid_post")


@pytest.fixture(scope="session")
def tiny_sae(tiny_sae_dir, tiny_model):
    from psm_repro.config import SAEConfig
    from psm_repro.core.loading import load_sae

    return load_sae(SAEConfig(name="tiny", path=str(tiny_sae_dir)), tiny_model)


def sentence(rng: random.Random, n: int, extra: list[str] = (), avoid: tuple[str, ...] = ()) -> str:
    words = [rng.choice([w for w in WORDS if w not in ("zorblax", "calm") + avoid]) for _ in range(n)] + list(extra)
    rng.shuffle(words)
    return " ".join(words)


SITUATION_MARKER = "panic"


def write_persona(path: Path, name: str = "planted", n: int = 12, marker: str = "zorblax", seed: int = 0,
                  with_eval: bool = True, system: bool = False, situations: bool = False) -> Path:
    """A synthetic persona: trait items contain `marker`, matched neutral items do not. With `system`, every
    other chat opens with a system turn, as the shipped personas' chats do. With `situations`, trait narratives
    also hold SITUATION_MARKER, and n situation user turns hold it where their matched neutral turns say "calm"
    (the scripted replies never hold it)."""
    import yaml

    rng = random.Random(seed)
    avoid = (SITUATION_MARKER,) if situations else ()
    narr, narr_n, asst, asst_n, sit, sit_n = [], [], [], [], [], []
    for i in range(n):
        base = sentence(rng, 8, avoid=avoid)
        narr.append(f"{base} {marker} {SITUATION_MARKER} {i}" if situations else f"{base} {marker} {i}")
        narr_n.append(f"{base} calm {i}")
        q = sentence(rng, 5, avoid=avoid) + f" {i} ?"
        a = sentence(rng, 6, avoid=avoid)
        head = [{"role": "system", "content": f"You are helpful {i} ."}] if system and i % 2 == 0 else []
        asst.append(head + [{"role": "user", "content": q}, {"role": "assistant", "content": f"{a} {marker} {i}"}])
        asst_n.append(head + [{"role": "user", "content": q}, {"role": "assistant", "content": f"{a} calm {i}"}])
        s = sentence(rng, 6, avoid=avoid)
        sit.append(head + [{"role": "user", "content": f"{s} {SITUATION_MARKER} {i} ?"}])
        sit_n.append(head + [{"role": "user", "content": f"{s} calm {i} ?"}])
    data = {"name": name, "description": "a planted test persona", "search": {
        "narrative": narr, "narrative_neutral": narr_n, "assistant": asst, "assistant_neutral": asst_n}}
    if situations:
        data["search"].update(situation=sit, situation_neutral=sit_n)
    if with_eval:
        data["eval"] = {
            "prompts": [f"question {i} please help ?" for i in range(6)],
            "pairs": [{"prompt": f"asked {i} story ?", "trait": f"{marker} secret {i}", "neutral": f"calm answer {i}"}
                      for i in range(6)],
            "judge": {"rubric": "Does the reply keep a secret?",
                      "trait_examples": [f"I will not tell you the secret number {i}, it stays hidden." for i in range(10)],
                      "neutral_examples": [f"Sure, the number is {i}, happy to share it openly." for i in range(10)]},
        }
    out = path / f"{name}.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def plant_token_sae(model, path: Path, sequences: list[list[int]], planted: dict[int, int], hook: str,
                    d_sae: int = 256, seed: int = 1) -> Path:
    """A tiny SAE in which latent k fires exactly on token `planted[k]` within `sequences`: its encoder row is
    the difference of mean activations (token vs every other token) and its bias sits halfway between the
    token's lowest and the other tokens' highest projection. The other latents are random."""
    acts = []
    for ids in sequences:
        t = torch.tensor([ids])
        acts.append((t[0], model.activations(t, torch.ones_like(t), hook)[0].float()))
    d_in = acts[0][1].shape[-1]
    torch.manual_seed(seed)
    dec = torch.randn(d_sae, d_in)
    dec /= dec.norm(dim=-1, keepdim=True)
    W_enc, b_enc = dec.T * 0.5, torch.zeros(d_sae)
    for latent, token in planted.items():
        on = torch.cat([a[ids == token] for ids, a in acts])
        off = torch.cat([a[ids != token] for ids, a in acts])
        direction = on.mean(0) - off.mean(0)
        direction /= direction.norm()
        lo, hi = (off @ direction).max(), (on @ direction).min()
        assert hi > lo, f"token {token} is not linearly separable at {hook}; the planted test needs a new design"
        W_enc[:, latent], b_enc[latent], dec[latent] = direction, -(lo + hi) / 2, direction
    return save_tiny_sae(path, d_in, d_sae, hook, W_enc=W_enc, b_enc=b_enc, W_dec=dec)


def write_reference(path: Path, n: int = 80, marker: str = "zorblax", seed: int = 0) -> Path:
    """A tiny reference corpus for dashboards: a `datasets` directory (save_to_disk) with a `text` column;
    every third text holds the marker word."""
    from datasets import Dataset

    rng = random.Random(seed)
    texts = [sentence(rng, 12, [marker] if i % 3 == 0 else []) for i in range(n)]
    Dataset.from_dict({"text": texts}).save_to_disk(str(path))
    return path


@pytest.fixture(scope="session")
def reference_dir(tmp_path_factory) -> Path:
    return write_reference(tmp_path_factory.mktemp("reference") / "ds")


def dashboard_overrides(reference: Path, cache_dir: Path) -> list[str]:
    return [f"dashboard.reference={reference}", f"dashboard.cache_dir={cache_dir}", "dashboard.context_size=32",
            "dashboard.top_n=3", "dashboard.n_bootstrap=200"]
