import numpy as np
import torch

from psm_repro import stats


def test_benjamini_hochberg_matches_hand_computed_values():
    p = np.array([0.01, 0.04, 0.03, 0.20])
    # sorted: .01 .03 .04 .20 -> .04 .06 .0533 .20 -> monotone .04 .0533 .0533 .20
    np.testing.assert_allclose(stats.benjamini_hochberg(p), [0.04, 0.05333333, 0.05333333, 0.20])


def test_sign_flip_pvalues_are_small_for_a_real_shift_and_uniform_under_the_null():
    gen = torch.Generator().manual_seed(0)
    shifted = torch.randn(30, 1, generator=gen) + 1.0
    assert stats.sign_flip_pvalues(shifted, 2000, gen)[0] < 0.01
    null = torch.randn(30, 400, generator=gen)
    p = stats.sign_flip_pvalues(null, 500, gen).numpy()
    assert 0.03 < (p < 0.05).mean() < 0.08  # about alpha of null latents reject
    assert p.min() >= 1 / 501


def test_paired_effect_is_zero_for_identical_sets_and_finite_for_constant_shift():
    assert stats.paired_effect(torch.zeros(10, 3)).abs().max() == 0
    eff = stats.paired_effect(torch.ones(10, 1))
    assert torch.isfinite(eff).all() and eff[0] > 1


def test_bootstrap_interval_covers_the_mean_and_groups_resample_together():
    rng = np.random.default_rng(0)
    values = rng.normal(2.0, 1.0, 200)
    mean, lo, hi = stats.bootstrap_ci(values, 2000, seed=0)
    assert lo < mean < hi and lo < 2.0 < hi
    groups = np.repeat(np.arange(20), 10)
    _, glo, ghi = stats.bootstrap_ci(values + np.repeat(rng.normal(0, 3, 20), 10), 2000, seed=0, groups=groups)
    assert ghi - glo > hi - lo  # between-prompt variance widens the interval
