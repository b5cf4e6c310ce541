"""Reused vs new latents: a copied SAE matches 100%, planted reused latents come out as planted, random directions
match at the null's rate, and the rotation null is a rotation. Plus the post-trained model as a model config: the
exported adapter loads to the weights training merged, and a missing adapter is one line."""

import copy
import os

import numpy as np
import pytest
import torch

from psm_repro.posttraining import reuse


def _decoders(n: int = 512, d: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g)


def test_a_copied_sae_matches_every_latent_to_itself():
    base = _decoders()
    res = reuse.reused_vs_new(base.clone() * 3.0, base, np.ones(len(base), bool), n_rotations=6, null_quantile=0.99,
                              seed=0)
    assert res["reused"]["share"] == 1.0 and res["reused"]["k"] == len(base)
    assert np.array_equal(res["best_index_F"], np.arange(len(base)))  # each to itself
    assert np.allclose(res["best_cos_F"], 1.0, atol=1e-5)


def test_planted_reused_latents_come_out_reused_and_random_ones_new():
    base = _decoders(seed=1)
    g = torch.Generator().manual_seed(2)
    post = torch.randn(400, 64, generator=g)
    kept = torch.arange(0, 400, 2)  # even latents: base latents 0, 2, 4, ... lightly perturbed (cosine ~0.95)
    post[kept] = base[kept] + 0.3 * torch.randn(len(kept), 64, generator=g) * base[kept].norm(dim=1, keepdim=True) / 8
    alive = np.ones(400, bool)
    alive[[1, 3]] = False  # dead latents are counted neither way
    res = reuse.reused_vs_new(post, base, alive, n_rotations=10, null_quantile=0.99, seed=0)
    reused = res["reused_F"]
    assert reused[kept.numpy()].all() and np.array_equal(res["best_index_F"][kept.numpy()], kept.numpy())
    odd = np.setdiff1d(np.arange(1, 400, 2), [1, 3])
    assert reused[odd].mean() < 0.05  # random directions: about the null's 1%
    assert res["reused"]["n"] == 398 and res["reused"]["k"] == int(reused.sum())
    assert not reused[[1, 3]].any() and res["n_dead"] == 2
    assert res["reused"]["ci_low"] < res["reused"]["share"] < res["reused"]["ci_high"]
    assert 0.0 <= res["false_match_rate"] < 0.05  # the held-out rotations: near the 1% it was set for


def test_the_threshold_is_the_null_quantile_of_rotated_best_cosines():
    base, post = _decoders(seed=3), _decoders(n=256, seed=4)
    null = reuse.rotation_null(post, base, 4, seed=7)
    res = reuse.reused_vs_new(post, base, np.ones(256, bool), n_rotations=4, null_quantile=0.9, seed=7)
    assert res["threshold"] == pytest.approx(float(np.quantile(null[:2], 0.9)))
    assert res["false_match_rate"] == pytest.approx(float((null[2:] > res["threshold"]).mean()))
    # 256 random unit vectors in 64-d against 512: the largest |cos| of Gaussian directions is ~ sqrt(2 ln 512 / 64)
    assert 0.2 < res["null_best_cos_median"] < 0.55


def test_a_random_rotation_is_orthogonal_and_fixed_by_its_seed():
    q = reuse.random_rotation(32, torch.Generator().manual_seed(0))
    assert torch.allclose(q @ q.T, torch.eye(32), atol=1e-5)
    assert torch.equal(q, reuse.random_rotation(32, torch.Generator().manual_seed(0)))
    assert not torch.equal(q, reuse.random_rotation(32, torch.Generator().manual_seed(1)))


def test_the_share_interval_is_wilsons():
    out = reuse.proportion(8, 10)
    z = 1.959963984540054  # hand-computed Wilson interval for 8 of 10
    centre, half = (0.8 + z * z / 20) / (1 + z * z / 10), z * np.sqrt(0.8 * 0.2 / 10 + z * z / 400) / (1 + z * z / 10)
    assert out["share"] == 0.8 and out["ci_low"] == pytest.approx(centre - half) and \
        out["ci_high"] == pytest.approx(centre + half)
    with pytest.raises(ValueError, match="n_rotations"):
        reuse.reused_vs_new(_decoders(), _decoders(), np.ones(512, bool), 1, 0.99, 0)


def test_the_exported_adapter_loads_as_a_model_config_to_the_weights_training_merged(tiny_model, tiny_model_dir,
                                                                                     tmp_path):
    from psm_repro.config import ModelConfig
    from psm_repro.core.loading import LoadError, load_model, weights_id
    from psm_repro.posttraining import sft
    from psm_repro.posttraining.data import sft_example

    tok = tiny_model.tokenizer
    examples = [sft_example(tok, [{"role": "user", "content": f"word {i}"}, {"role": "assistant", "content": "yes"}])
                for i in range(8)]
    trained = copy.deepcopy(tiny_model)
    export = tmp_path / "models" / "tiny_posttrained"
    sft.train_lora(trained, examples, rank=4, lr=1e-2, batch_size=4, epochs=1, checkpoint_every=10, seed=0,
                   ckpt_dir=tmp_path / "ckpt", desc="test", export_dir=export, base_name="tiny")
    cfg = ModelConfig(name="tiny_posttrained", source="path", path=str(tiny_model_dir), device="cpu",
                      adapter=str(export))
    loaded = load_model(cfg)
    ids = torch.tensor([tok("word 3 yes", add_special_tokens=False)["input_ids"]])
    want, got = trained.model(ids).logits, loaded.model(ids).logits
    assert torch.allclose(want, got, atol=1e-5) and not torch.allclose(tiny_model.model(ids).logits, got, atol=1e-3)
    assert weights_id(cfg).startswith("tiny_posttrained+") and weights_id(cfg) != "tiny_posttrained"
    umask = os.umask(0)
    os.umask(umask)
    assert all(f.stat().st_mode & 0o777 == 0o666 & ~umask for f in export.iterdir())  # not a temp file's 0600

    # exporting the same adapter again leaves it; other weights move the old one aside, never overwrite it
    before = (export / "adapter_model.safetensors").read_bytes()
    sft.train_lora(copy.deepcopy(tiny_model), examples, rank=4, lr=1e-2, batch_size=4, epochs=1, checkpoint_every=10,
                   seed=0, ckpt_dir=tmp_path / "ckpt", desc="test", export_dir=export, base_name="tiny")
    assert (export / "adapter_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in export.parent.iterdir()) == ["tiny_posttrained"]
    sft.train_lora(copy.deepcopy(tiny_model), examples, rank=4, lr=1e-2, batch_size=4, epochs=1, checkpoint_every=10,
                   seed=1, ckpt_dir=tmp_path / "ckpt1", desc="test", export_dir=export, base_name="tiny")
    aside = [p for p in export.parent.iterdir() if p.name.startswith("tiny_posttrained.replaced-")]
    assert len(aside) == 1 and (aside[0] / "adapter_model.safetensors").read_bytes() == before
    assert (export / "adapter_model.safetensors").read_bytes() != before

    missing = ModelConfig(name="x", source="path", path=str(tiny_model_dir), device="cpu", adapter=str(tmp_path / "no"))
    with pytest.raises(LoadError, match=r"^model.adapter: .*no holds no peft adapter.*posttrain"):
        load_model(missing)
