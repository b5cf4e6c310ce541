import warnings

import numpy as np
import pytest
import torch
from scipy import stats as sps

from psm_repro.core import stats


def test_benjamini_hochberg_matches_hand_computed_values():
    p = np.array([0.01, 0.04, 0.03, 0.20])
    # sorted: .01 .03 .04 .20 -> .04 .06 .0533 .20 -> monotone .04 .0533 .0533 .20
    np.testing.assert_allclose(stats.benjamini_hochberg(p), [0.04, 0.05333333, 0.05333333, 0.20])
    assert len(stats.benjamini_hochberg(np.array([]))) == 0


def test_holm_matches_hand_computed_values():
    p = np.array([0.01, 0.04, 0.03, 0.20])
    # sorted: .01 .03 .04 .20 times 4 3 2 1 -> .04 .09 .08 .20 -> running max .04 .09 .09 .20
    np.testing.assert_allclose(stats.holm(p), [0.04, 0.09, 0.09, 0.20])
    np.testing.assert_allclose(stats.holm(np.array([0.5, 0.6])), [1.0, 1.0])  # capped at 1


def test_sign_flip_p_is_exact_for_small_n():
    # 16 sign patterns; mean >= observed only for the observed one and the one flipping -0.5: p = 2/16
    assert stats.sign_flip_p(np.array([1.0, 2.0, 3.0, -0.5])) == pytest.approx(0.125)
    assert stats.sign_flip_p(np.array([1.0, 2.0, 3.0, -0.5]), alternative="less") == pytest.approx(15 / 16)
    assert stats.sign_flip_p(np.array([1.0, 2.0, np.nan])) == pytest.approx(0.25)  # NaN dropped
    assert stats.sign_flip_p(np.zeros(6)) == 1.0
    rng = np.random.default_rng(0)
    assert stats.sign_flip_p(rng.normal(1.0, 1.0, 40), n_resamples=2000) < 0.002


def test_torch_sign_flip_pvalues_match_scipy_permutation_test():
    rng = np.random.default_rng(0)
    n = 12  # 4096 sign patterns: scipy enumerates them all (exact p)
    diff = np.column_stack([rng.normal(0.8, 1, n), rng.normal(0.3, 1, n), rng.normal(0, 1, n),
                            rng.normal(-0.5, 1, n), (rng.random(n) < 0.3) * rng.exponential(1, n)])
    exact = np.array([sps.permutation_test((d,), np.mean, permutation_type="samples", alternative="greater",
                                           n_resamples=9999).pvalue for d in diff.T])
    b = 20000
    fast = stats.sign_flip_pvalues(torch.tensor(diff, dtype=torch.float32), b, torch.Generator().manual_seed(0)).numpy()
    mc_se = np.sqrt(exact * (1 - exact) / b)
    assert np.all(np.abs(fast - exact) <= 4 * mc_se + 2 / b), (fast, exact)
    assert exact.min() < 0.05 and exact.max() > 0.5  # the case covers both tails


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


def test_group_means_sorted_by_group_and_nan_safe():
    values = np.array([1.0, 2.0, np.nan, 4.0, np.nan])
    groups = np.array([7, 7, 0, 0, 3])
    np.testing.assert_allclose(stats.group_means(values, groups), [4.0, np.nan, 1.5])


def test_bca_interval_covers_the_mean_and_matches_scipy():
    rng = np.random.default_rng(0)
    values = rng.exponential(1.0, 60)
    mean, lo, hi = stats.bca_interval(values, 2000, seed=0)
    ref = sps.bootstrap((values,), np.mean, n_resamples=2000, method="BCa", rng=np.random.default_rng(0))
    assert mean == pytest.approx(values.mean())
    assert (lo, hi) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    assert lo < mean < hi
    pct = sps.bootstrap((values,), np.mean, n_resamples=2000, method="percentile", rng=np.random.default_rng(0))
    assert lo != pytest.approx(pct.confidence_interval.low)  # BCa, not the percentile interval
    _, lo90, hi90 = stats.bca_interval(values, 2000, seed=0, level=0.90)
    assert lo < lo90 < hi90 < hi


def test_bca_interval_on_degenerate_data_gives_finite_values_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert stats.bca_interval(np.array([0.3, 0.3, 0.3]), 500, 0) == (0.3, 0.3, 0.3)
        assert stats.bca_interval(np.array([2.0, np.nan]), 500, 0) == (2.0, 2.0, 2.0)
        assert np.isnan(stats.bca_interval(np.array([np.nan]), 500, 0)).all()
        mean, lo, hi = stats.bca_interval(np.array([0.0] * 9 + [1.0]), 500, 0)  # one nonzero rate
        assert np.isfinite([lo, hi]).all() and lo <= mean <= hi


def test_bootstrap_ci_resamples_groups_together():
    rng = np.random.default_rng(0)
    values = rng.normal(2.0, 1.0, 200)
    mean, lo, hi = stats.bootstrap_ci(values, 2000, seed=0)
    assert lo < mean < hi and lo < 2.0 < hi
    groups = np.repeat(np.arange(20), 10)
    _, glo, ghi = stats.bootstrap_ci(values + np.repeat(rng.normal(0, 3, 20), 10), 2000, seed=0, groups=groups)
    assert ghi - glo > hi - lo  # between-prompt variance widens the interval
