"""Hook resolution checked against TransformerLens itself: tiny random GPT-2, Llama and Gemma-2 models are
converted with TL's own weight converters, and at every hook kind a public SAE uses, the activation psm_repro
reads equals `HookedTransformer.run_with_cache`, and an edit there changes the logits exactly as TL's
`run_with_hooks` does."""

import pytest
import torch

from psm_repro.core.hooked import HookedModel

KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
V, D = 100, 64


def _pair(arch: str):
    import transformers as tf
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import (convert_gemma_weights, convert_gpt2_weights,
                                                                convert_llama_weights)

    torch.manual_seed(0)
    common = dict(d_model=D, d_head=16, n_heads=4, n_layers=3, n_ctx=128, d_vocab=V)
    if arch == "gpt2":
        hf = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=V, n_embd=D, n_layer=3, n_head=4, n_positions=128))
        cfg = HookedTransformerConfig(**common, d_mlp=4 * D, act_fn="gelu_new", normalization_type="LN",
                                      eps=hf.config.layer_norm_epsilon, original_architecture="GPT2LMHeadModel")
        convert = convert_gpt2_weights
    elif arch == "llama":
        hf = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=128, num_hidden_layers=3,
                                                num_attention_heads=4, num_key_value_heads=2,
                                                max_position_embeddings=128))
        cfg = HookedTransformerConfig(**common, d_mlp=128, n_key_value_heads=2, act_fn="silu", normalization_type="RMS",
                                      eps=hf.config.rms_norm_eps, original_architecture="LlamaForCausalLM",
                                      positional_embedding_type="rotary", rotary_dim=16, rotary_base=10000,
                                      rotary_adjacent_pairs=False, gated_mlp=True, final_rms=True)
        convert = convert_llama_weights
    else:  # Gemma-2: normalisation before and after attention and MLP, soft-capped logits, alternating local layers
        hf = tf.Gemma2ForCausalLM(tf.Gemma2Config(vocab_size=V, hidden_size=D, intermediate_size=128, num_hidden_layers=3,
                                                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                                  query_pre_attn_scalar=16, max_position_embeddings=128,
                                                  sliding_window=64))
        cfg = HookedTransformerConfig(**common, d_mlp=128, n_key_value_heads=2, act_fn="gelu_pytorch_tanh",
                                      normalization_type="RMS", eps=hf.config.rms_norm_eps,
                                      original_architecture="Gemma2ForCausalLM", positional_embedding_type="rotary",
                                      rotary_dim=16, rotary_base=10000.0, rotary_adjacent_pairs=False,
                                      use_attn_scale=True, window_size=64, use_local_attn=True,
                                      attn_types=["local", "global", "local"], attn_scores_soft_cap=50.0,
                                      output_logits_soft_cap=30.0, gated_mlp=True, final_rms=True,
                                      use_normalization_before_and_after=True)
        convert = convert_gemma_weights
    hf.eval()
    tl = HookedTransformer(cfg)
    tl.load_and_process_state_dict(convert(hf, cfg), fold_ln=False, center_writing_weights=False,
                                   center_unembed=False, fold_value_biases=False, refactor_factored_attn_matrices=False)
    return HookedModel(hf, tokenizer=None, name=arch), tl.eval()


@pytest.fixture(scope="module", params=["gpt2", "llama", "gemma2"])
def pair(request):
    return _pair(request.param)


IDS = torch.tensor([[1, 5, 6, 7, 9, 11, 2], [3, 8, 8, 4, 12, 50, 60]])


def test_the_converted_model_is_the_same_function(pair):
    model, tl = pair
    with torch.no_grad():
        torch.testing.assert_close(model.model(IDS).logits, tl(IDS), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layer", [0, 2])
def test_every_hook_reads_what_transformer_lens_caches(pair, kind, layer):
    model, tl = pair
    name = f"blocks.{layer}.hook_{kind}"
    _, cache = tl.run_with_cache(IDS, names_filter=name)
    torch.testing.assert_close(model.activations(IDS, torch.ones_like(IDS), name), cache[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_an_edit_at_every_hook_changes_the_logits_as_transformer_lens_does(pair, kind):
    """Add a fixed vector at one hook from the third position on; the logits must move exactly as TL's."""
    model, tl = pair
    name = f"blocks.1.hook_{kind}"
    vec = torch.randn(D, generator=torch.Generator().manual_seed(1)) * 3

    def shift(acts, *_):
        out = acts.clone()
        out[:, 2:] += vec
        return out

    with torch.no_grad():
        want = tl.run_with_hooks(IDS, fwd_hooks=[(name, lambda acts, hook: shift(acts))])
        plain = model.model(IDS).logits
        with model.edit(name, shift):
            got = model.model(IDS).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (got - plain).abs().max() > 1e-2  # the edit did something
