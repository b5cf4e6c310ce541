import pytest
import torch

import psm_repro.core.steering as steering
from psm_repro.core.steering import Intervention, generate, steer

HOOK = "blocks.2.hook_resid_post"


def _logits(model, ids):
    with torch.inference_mode():
        return model.model(input_ids=ids, use_cache=False).logits


def _feats(model, sae, ids):
    acts = model.activations(ids, torch.ones_like(ids), HOOK)
    return sae.encode(acts)


IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])


def test_clamp_to_the_latents_own_value_leaves_logits_unchanged(tiny_model, tiny_sae):
    feats = _feats(tiny_model, tiny_sae, IDS)[0, -1]
    f = int(torch.argmax(feats))
    assert feats[f] > 0
    base = _logits(tiny_model, IDS)
    iv = Intervention(mode="clamp", feature=f, scale=float(feats[f]))
    # steer only the last position, whose own value of latent f is exactly the target
    with steer(tiny_model, tiny_sae, [iv], torch.tensor([1.0]), positions="generated", prompt_width=IDS.shape[1] - 1):
        out = _logits(tiny_model, IDS)
    torch.testing.assert_close(out, base, atol=1e-5, rtol=1e-5)
    # and a different target does change them (the test can fail)
    with steer(tiny_model, tiny_sae, [iv], torch.tensor([3.0]), positions="generated", prompt_width=IDS.shape[1] - 1):
        assert not torch.allclose(_logits(tiny_model, IDS), base, atol=1e-3)


def test_ablating_an_inactive_latent_leaves_logits_unchanged(tiny_model, tiny_sae):
    feats = _feats(tiny_model, tiny_sae, IDS)[0]
    inactive = int(torch.nonzero((feats > 0).sum(0) == 0)[0])
    active = int(torch.argmax(feats.max(0).values))
    base = _logits(tiny_model, IDS)
    with steer(tiny_model, tiny_sae, [Intervention(mode="ablate", feature=inactive)], torch.tensor([1.0])):
        torch.testing.assert_close(_logits(tiny_model, IDS), base, atol=1e-6, rtol=1e-6)
    with steer(tiny_model, tiny_sae, [Intervention(mode="ablate", feature=active)], torch.tensor([1.0])):
        assert not torch.allclose(_logits(tiny_model, IDS), base, atol=1e-4)


def test_add_shifts_the_residual_by_exactly_the_scaled_decoder_row(tiny_model, tiny_sae):
    ids = torch.tensor([[tiny_model.tokenizer.bos_token_id, 5, 6, 7]])
    base = tiny_model.activations(ids, torch.ones_like(ids), HOOK)
    iv = Intervention(mode="add", feature=3, scale=2.0)
    with steer(tiny_model, tiny_sae, [iv], torch.tensor([1.5])):
        steered = tiny_model.activations(ids, torch.ones_like(ids), HOOK)
    expected = base + 1.5 * 2.0 * tiny_sae.W_dec[3]
    torch.testing.assert_close(steered[:, 1:], expected[:, 1:])
    torch.testing.assert_close(steered[:, 0], base[:, 0])  # BOS is a special token: not steered


def test_each_batch_row_gets_its_own_coefficient(tiny_model, tiny_sae):
    ids = IDS.repeat(2, 1)
    base = _logits(tiny_model, ids)
    with steer(tiny_model, tiny_sae, [Intervention(mode="add", feature=3, scale=4.0)], torch.tensor([0.0, 2.0])):
        out = _logits(tiny_model, ids)
    torch.testing.assert_close(out[0], base[0])
    assert not torch.allclose(out[1], base[1], atol=1e-3)


def test_one_coefficient_steers_every_row_of_a_batch(tiny_model, tiny_sae):
    ids = torch.tensor([[tiny_model.tokenizer.bos_token_id, 5, 6, 7]]).repeat(3, 1)
    base = tiny_model.activations(ids, torch.ones_like(ids), HOOK)
    with steer(tiny_model, tiny_sae, [Intervention(mode="add", feature=3, scale=2.0)], torch.tensor([1.5])):
        steered = tiny_model.activations(ids, torch.ones_like(ids), HOOK)
    torch.testing.assert_close(steered[:, 1:], base[:, 1:] + 3.0 * tiny_sae.W_dec[3])
    with pytest.raises(ValueError, match="batch of 3 rows but 2 coefficients"):
        with steer(tiny_model, tiny_sae, [Intervention(mode="add", feature=3)], torch.tensor([1.0, 2.0])):
            tiny_model.activations(ids, torch.ones_like(ids), HOOK)


def test_generated_positions_steer_every_new_token_with_kv_cache(tiny_model, tiny_sae, monkeypatch):
    seen = []
    real = steering.position_mask

    def recording(info, T, *args, **kwargs):
        mask = real(info, T, *args, **kwargs)
        seen.append((T, info.offset, mask.clone()))
        return mask

    monkeypatch.setattr(steering, "position_mask", recording)
    prompt = [[1, 5, 6, 7]]
    iv = Intervention(mode="add", feature=3, scale=50.0)
    with steer(tiny_model, tiny_sae, [iv], torch.tensor([1.0]), positions="generated", prompt_width=4):
        cached, _ = generate(tiny_model, prompt, max_new_tokens=6, temperature=0.0, seed=0)
    prefill, steps = seen[0], seen[1:]
    assert prefill[0] == 4 and not prefill[2].any()  # no prompt position is steered
    assert len(steps) == 5 and all(T == 1 and m.all() for T, _, m in steps)  # every fed-back new token is
    assert [off for _, off, _ in steps] == [4, 5, 6, 7, 8]
    unsteered, _ = generate(tiny_model, prompt, max_new_tokens=6, temperature=0.0, seed=0)
    assert cached != unsteered


def test_bad_mode_and_positions_are_rejected(tiny_model, tiny_sae):
    with pytest.raises(ValueError, match="steer.mode"):
        Intervention(mode="multiply", feature=1)
    with pytest.raises(ValueError, match="steer.positions"):
        with steer(tiny_model, tiny_sae, [Intervention(feature=1)], torch.tensor([1.0]), positions="middle"):
            pass


def _geometry_sae(tmp_path, tiny_model, **cfg):
    """An SAE whose decoder rows have norms 0.5..2.5, so W_dec[f] and the SAE's own geometry differ."""
    from conftest import save_tiny_sae

    from psm_repro.config import SAEConfig
    from psm_repro.core.loading import load_sae

    torch.manual_seed(3)
    dec = torch.randn(128, 64)
    dec = dec / dec.norm(dim=-1, keepdim=True) * torch.linspace(0.5, 2.5, 128)[:, None]
    arch = "topk" if "rescale_acts_by_decoder_norm" in cfg else "standard"
    path = save_tiny_sae(tmp_path / "sae", 64, 128, HOOK, arch=arch, W_dec=dec, **cfg)
    return load_sae(SAEConfig(name="geometry", path=str(path)), tiny_model)


GEOMETRIES = {
    # hand-computed: what decode(c e_f) - decode(0) is for each convention, per token x
    "rescale_acts_by_decoder_norm": (dict(rescale_acts_by_decoder_norm=True),
                                     lambda w, x: w / w.norm() * torch.ones_like(x[..., :1])),
    "constant_norm_rescale": (dict(normalize_activations="constant_norm_rescale"),
                              lambda w, x: w * x.norm(dim=-1, keepdim=True) / 64 ** 0.5),
    "layer_norm": (dict(normalize_activations="layer_norm"), lambda w, x: w * x.std(dim=-1, keepdim=True)),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_add_injects_what_the_saes_own_decode_writes(tiny_model, tmp_path, name):
    cfg, expected_direction = GEOMETRIES[name]
    sae = _geometry_sae(tmp_path, tiny_model, **cfg)
    ids = torch.tensor([[5, 6, 7, 8]])
    base = tiny_model.activations(ids, torch.ones_like(ids), HOOK)
    f = 100
    with steer(tiny_model, sae, [Intervention(mode="add", feature=f, scale=2.0)], torch.tensor([1.5])):
        steered = tiny_model.activations(ids, torch.ones_like(ids), HOOK)
    want = 1.5 * 2.0 * expected_direction(sae.W_dec[f].detach(), base)
    torch.testing.assert_close(steered - base, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(want, 1.5 * 2.0 * sae.W_dec[f].expand_as(want), atol=1e-2)  # W_dec[f] alone is wrong


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_add_and_clamp_agree_on_a_latent_that_was_off(tiny_model, tmp_path, name):
    """Clamping an inactive latent to v writes decode(v e_f) - decode(0), the same as adding v."""
    sae = _geometry_sae(tmp_path, tiny_model, **GEOMETRIES[name][0])
    ids = torch.tensor([[5, 6, 7, 8]])
    feats = _feats(tiny_model, sae, ids)[0]
    f = int(torch.nonzero((feats > 0).sum(0) == 0)[-1])
    out = {}
    for mode in ("add", "clamp"):
        with steer(tiny_model, sae, [Intervention(mode=mode, feature=f, scale=2.0)], torch.tensor([1.5])):
            out[mode] = tiny_model.activations(ids, torch.ones_like(ids), HOOK)
    torch.testing.assert_close(out["add"], out["clamp"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("temperature, top_p, scale", [(0.2, 0.9, 1.0), (0.7, 0.95, 3.0), (1.3, 0.5, 1.0),
                                                        (1.0, 0.99, 0.5)])
def test_nucleus_warper_keeps_the_tokens_hf_warpers_keep(temperature, top_p, scale):
    """Against HF's TemperatureLogitsWarper + TopPLogitsWarper: the same scores, and the same kept set except for
    tokens whose mass above them is within float32 rounding of top_p (HF sums the ascending tail of the whole
    vocabulary, NucleusWarper the descending head)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    from psm_repro.core.steering import NucleusWarper

    scores = torch.randn(16, 5000, generator=torch.Generator().manual_seed(7)) * scale
    ref = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, scores.clone()))
    got = NucleusWarper(temperature, top_p, k=8)(None, scores.clone())
    probs = (scores / temperature).softmax(-1)
    for r in range(16):
        kept_ref, kept_got = torch.isfinite(ref[r]), torch.isfinite(got[r])
        assert torch.equal(ref[r][kept_ref & kept_got], got[r][kept_ref & kept_got])
        differ = (kept_ref ^ kept_got).nonzero()[:, 0]
        above = torch.tensor([float(probs[r][probs[r] > probs[r, t]].sum()) for t in differ])
        assert len(differ) <= 2 and torch.all((above - top_p).abs() < 1e-4), (r, differ, above)
        assert kept_got.sum() >= 1


@pytest.mark.parametrize("positions, offset, T, expected", [
    # a 4-token prompt (positions 0-3) read in one call: "prompt" steers 0-3, the last prompt token included
    ("prompt", 0, 6, [1, 1, 1, 1, 0, 0]),
    ("generated", 0, 6, [0, 0, 0, 0, 1, 1]),
    # KV-cache steps: the first generated token sits at absolute position 4
    ("prompt", 4, 1, [0]),
    ("generated", 4, 1, [1]),
    ("prompt", 3, 2, [1, 0]),
    ("all", 7, 2, [1, 1]),
])
def test_position_mask_steers_exactly_the_documented_positions(positions, offset, T, expected):
    """Hand-written masks for prompt_width=4: an off-by-one at the prompt/generation boundary fails here."""
    from psm_repro.core.hooked import CallInfo
    from psm_repro.core.steering import position_mask

    mask = position_mask(CallInfo(input_ids=None, offset=offset), T, 2, positions, 4, None, "cpu")
    assert mask.tolist() == [[bool(x) for x in expected]] * 2
