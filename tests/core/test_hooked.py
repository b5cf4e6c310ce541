import pytest
import torch

from psm_repro.core.hooked import HookedModel


def test_hook_activations_equal_hf_hidden_states(tiny_model):
    ids, attn = tiny_model.pad_batch([[1, 5, 6, 7, 8], [1, 9, 10]])
    with torch.inference_mode():
        hs = tiny_model.model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states
    for layer in range(tiny_model.n_layers - 1):  # the last hidden state has the final norm applied
        acts = tiny_model.activations(ids, attn, f"blocks.{layer}.hook_resid_post")
        torch.testing.assert_close(acts, hs[layer + 1])
        pre = tiny_model.activations(ids, attn, f"blocks.{layer}.hook_resid_pre")
        torch.testing.assert_close(pre, hs[layer])
        torch.testing.assert_close(tiny_model.activations(ids, attn, f"model.layers.{layer}"), hs[layer + 1])


def test_unknown_hook_names_fail_clearly(tiny_model):
    with pytest.raises(KeyError, match="does not exist"):
        tiny_model.resolve("blocks.1.hook_mlp_nonsense")
    with pytest.raises(KeyError, match="only 4 layers"):
        tiny_model.resolve("blocks.9.hook_resid_post")


def _n_hooks(model: HookedModel) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.model.modules())


def test_hooks_are_removed_when_generation_raises(tiny_model):
    before = _n_hooks(tiny_model)

    def boom(acts, info):
        raise RuntimeError("boom")

    ids, attn = tiny_model.pad_batch([[1, 5, 6]])
    with pytest.raises(RuntimeError, match="boom"):
        with tiny_model.edit("blocks.1.hook_resid_post", boom):
            tiny_model.model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=3, do_sample=False)
    assert _n_hooks(tiny_model) == before


def test_position_ids_start_at_each_rows_first_real_token():
    from psm_repro.core.hooked import position_ids

    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]
