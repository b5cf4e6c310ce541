"""The exact code path a GPU user hits, per architecture, on tiny random models saved locally:
load through from_pretrained, SAE at the same hook name style as the public SAEs, find, steer. Each
architecture gets its own family's tokenizer (tests/families.py): Gemma's template without a system role,
Llama-3's headers, GPT-2 with no template at all."""

import pytest
import torch
from conftest import save_tiny_sae, write_persona
from families import FAMILIES, build_tokenizer as build_family_tokenizer

from psm_repro.config import FinderConfig, ModelConfig, SAEConfig
from psm_repro.core.chat import encode_prompt
from psm_repro.core.finder import find_features
from psm_repro.core.loading import load_model, load_sae
from psm_repro.core.personas import load_persona
from psm_repro.core.steering import Intervention, generate, steer

FAMILY_OF = {"llama": "llama31", "gemma2": "gemma2", "gemma3": "gemma2", "gpt2": "gpt2"}


def _config(arch: str, vocab: int, tok):
    import transformers as tf

    common = dict(vocab_size=vocab, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    if arch == "gemma2":  # Gemma Scope hook: blocks.L.hook_resid_post
        return tf.Gemma2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=16, **common), tf.Gemma2ForCausalLM, "blocks.1.hook_resid_post"
    if arch == "gemma3":  # Gemma Scope 2
        return tf.Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=16, **common), tf.Gemma3ForCausalLM, "blocks.1.hook_resid_post"
    if arch == "gpt2":  # gpt2-small-res-jb hook: blocks.L.hook_resid_pre
        return tf.GPT2Config(n_embd=64, n_layer=3, n_head=4, **common), tf.GPT2LMHeadModel, "blocks.1.hook_resid_pre"
    return (tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=2, **common), tf.LlamaForCausalLM, "blocks.1.hook_resid_post")


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3", "gpt2"])
def test_find_and_steer_on_a_tiny_model_of_each_architecture(arch, tmp_path):
    family = FAMILIES[FAMILY_OF[arch]]
    tok = build_family_tokenizer(family, tmp_path / "model")
    config, cls, hook = _config(arch, len(tok), tok)
    torch.manual_seed(0)
    cls(config).save_pretrained(tmp_path / "model")
    model = load_model(ModelConfig(name=arch, path=str(tmp_path / "model"), device="cpu",
                                   chat=family.template is not None))
    assert model.n_layers == 3

    ids, attn = model.pad_batch([[1, 5, 6, 7]])
    with torch.inference_mode():
        hs = model.model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states
    layer = int(hook.split(".")[1])
    want = hs[layer] if hook.endswith("resid_pre") else hs[layer + 1]
    torch.testing.assert_close(model.activations(ids, attn, hook), want)

    sae = load_sae(SAEConfig(name="tiny", path=str(save_tiny_sae(tmp_path / "sae", 64, 128, hook))), model)
    persona = load_persona(write_persona(tmp_path, n=8))
    found = find_features(model, sae, persona, FinderConfig(n_permutations=200, min_active_items=1), seed=0)
    assert found.rows and found.rows[0]["rank"] == 1

    prompt = encode_prompt(model.tokenizer, [{"role": "system", "content": "Be brief ."},
                                             {"role": "user", "content": "the secret ?"}])
    plain, _ = generate(model, [prompt], 5, 0.0, 0)
    iv = Intervention(mode="add", feature=found.rows[0]["feature"], scale=50.0)
    with steer(model, sae, [iv], torch.tensor([1.0])):
        steered, _ = generate(model, [prompt], 5, 0.0, 0)
    assert steered != plain


def test_an_sae_for_another_width_is_refused_naming_both(tmp_path, tiny_model):
    from psm_repro.core.loading import LoadError

    path = save_tiny_sae(tmp_path / "sae", 32, 64, "blocks.1.hook_resid_post")
    with pytest.raises(LoadError, match="d_in=32 but model tiny has width 64"):
        load_sae(SAEConfig(name="wide", path=str(path)), tiny_model)
    path = save_tiny_sae(tmp_path / "sae2", 64, 64, "blocks.7.hook_resid_post")
    with pytest.raises(LoadError, match="blocks.7.hook_resid_post"):
        load_sae(SAEConfig(name="deep", path=str(path)), tiny_model)


def test_centred_writing_weights_equal_the_hf_residual_minus_its_mean(tmp_path):
    """gpt2-small-res-jb was trained on a HookedTransformer with center_writing_weights: every vector
    written into the residual has zero mean over d_model. Centre the writing weights of a tiny GPT-2 by
    hand: its residual must equal the plain model's residual minus its mean, which is what sae_encode feeds
    such an SAE."""
    import copy

    tok = build_family_tokenizer(FAMILIES["gpt2"], tmp_path / "model")
    config, cls, hook = _config("gpt2", len(tok), tok)
    torch.manual_seed(0)
    plain = cls(config).eval()
    centred = copy.deepcopy(plain)
    with torch.no_grad():
        t = centred.transformer
        t.wte.weight -= t.wte.weight.mean(-1, keepdim=True)
        t.wpe.weight -= t.wpe.weight.mean(-1, keepdim=True)
        for blk in t.h:
            for proj in (blk.attn.c_proj, blk.mlp.c_proj):  # Conv1D: weight (in, d_model)
                proj.weight -= proj.weight.mean(-1, keepdim=True)
                proj.bias -= proj.bias.mean()
    ids = torch.tensor([[1, 5, 6, 7, 9]])
    with torch.inference_mode():
        hs_plain = plain(input_ids=ids, output_hidden_states=True).hidden_states
        hs_centred = centred(input_ids=ids, output_hidden_states=True).hidden_states
    for a, b in zip(hs_plain[:-1], hs_centred[:-1]):  # the last one has the final LayerNorm applied
        torch.testing.assert_close(b, a - a.mean(-1, keepdim=True), atol=1e-5, rtol=1e-4)


def test_sae_encode_centres_only_for_saes_that_ask(tmp_path):
    import json

    from sae_lens import SAE

    from psm_repro.core.loading import sae_centers_input, sae_encode

    path = save_tiny_sae(tmp_path / "sae", 16, 32, "blocks.1.hook_resid_pre")
    plain = SAE.load_from_disk(str(path))
    cfg = json.loads((path / "cfg.json").read_text())
    cfg["metadata"]["model_from_pretrained_kwargs"] = {"center_writing_weights": True}
    (path / "cfg.json").write_text(json.dumps(cfg))
    centring = SAE.load_from_disk(str(path))
    assert not sae_centers_input(plain) and sae_centers_input(centring)
    x = torch.randn(2, 3, 16) + 5.0
    torch.testing.assert_close(sae_encode(plain, x), plain.encode(x))
    torch.testing.assert_close(sae_encode(centring, x), plain.encode(x - x.mean(-1, keepdim=True)))
    assert not torch.allclose(sae_encode(centring, x), sae_encode(plain, x))
