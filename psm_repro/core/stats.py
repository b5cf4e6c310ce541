"""Statistics shared by the finder, the steering evaluation and the EM chain.

scipy/statsmodels do the work (BH-FDR, Holm, BCa bootstrap, sign-flip permutation tests); the one torch
function kept, `sign_flip_pvalues`, runs the same sign-flip test vectorised over thousands of latents and
is held equal to `scipy.stats.permutation_test` by tests/core/test_stats.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests


def paired_effect(diff_NF: torch.Tensor) -> torch.Tensor:
    """Paired standardized effect (d_z): mean of trait-minus-neutral differences over their SD.

    Sparse latents often have all-zero differences; the SD is floored so those get effect 0
    instead of NaN, and a latent that differs on a single pair does not get an infinite effect.
    """
    mean = diff_NF.mean(0)
    sd = diff_NF.std(0, unbiased=True) if diff_NF.shape[0] > 1 else torch.zeros_like(mean)
    floor = 1e-3 + 0.05 * diff_NF.abs().amax(0)
    return mean / torch.maximum(sd, floor)


def sign_flip_pvalues(diff_NF: torch.Tensor, n_permutations: int, generator: torch.Generator) -> torch.Tensor:
    """One-sided p-values (mean difference > 0) from a sign-flip permutation test, one per column.

    Swapping the labels of a matched pair flips the sign of its difference, so this is the
    exact "shuffle the labels within pairs" null. p = (1 + #{null >= observed}) / (1 + n_permutations),
    the same randomized p-value as `sign_flip_p` (scipy) when 2**N > n_permutations.
    """
    n = diff_NF.shape[0]
    observed = diff_NF.mean(0)
    exceed = torch.zeros_like(observed)
    chunk = 250
    for start in range(0, n_permutations, chunk):
        m = min(chunk, n_permutations - start)
        signs = torch.randint(0, 2, (m, n), generator=generator, dtype=torch.float32) * 2 - 1
        null = signs @ diff_NF / n
        exceed += (null >= observed - 1e-9).sum(0)
    return (1 + exceed) / (1 + n_permutations)


def random_sign_flip(diff_NF: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw of the label-shuffled data: each pair's labels swapped with probability 1/2."""
    signs = torch.randint(0, 2, (diff_NF.shape[0], 1), generator=generator, dtype=torch.float32) * 2 - 1
    return diff_NF * signs


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def sign_flip_p(diffs: np.ndarray, alternative: str = "greater", n_resamples: int = 9999, seed: int = 0) -> float:
    """Paired sign-flip permutation test of mean(diffs) against 0 (`scipy.stats.permutation_test`).

    Exact (all 2**n sign patterns) when 2**n <= n_resamples, randomized otherwise. NaNs are dropped;
    no finite difference gives NaN.
    """
    diffs = np.asarray(diffs, dtype=float)
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) == 0:
        return float("nan")
    res = sps.permutation_test((diffs,), _mean, permutation_type="samples", vectorized=True,
                               n_resamples=n_resamples, alternative=alternative, rng=np.random.default_rng(seed))
    return float(res.pvalue)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH q-values (`scipy.stats.false_discovery_control`) for an array of p-values."""
    p = np.asarray(p, dtype=float)
    return p.copy() if len(p) == 0 else sps.false_discovery_control(p, method="bh")


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values (family-wise error), via statsmodels' `multipletests`."""
    p = np.asarray(p, dtype=float)
    return p.copy() if len(p) == 0 else multipletests(p, method="holm")[1]


def group_means(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Mean of `values` per group, in sorted group-id order (`np.unique(groups)`); NaN values are dropped,
    and a group with no finite value gets NaN (so two arms' group means stay aligned by position)."""
    values, groups = np.asarray(values, dtype=float), np.asarray(groups)
    uniq, inv = np.unique(groups, return_inverse=True)
    keep = np.isfinite(values)
    sums = np.bincount(inv[keep], weights=values[keep], minlength=len(uniq))
    counts = np.bincount(inv[keep], minlength=len(uniq))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def bca_interval(values: np.ndarray, n_resamples: int, seed: int, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of `values` and a BCa bootstrap interval for it (`scipy.stats.bootstrap`, method="BCa").

    `values` are the resampling units (per-prompt or per-question means); NaNs are dropped. Fewer than
    two values or all-equal values give (mean, mean, mean) (no values: NaNs). Where BCa is undefined
    (degenerate resamples, e.g. a single nonzero rate) the percentile interval is used instead.
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if len(values) < 2 or np.all(values == values[0]):
        return mean, mean, mean
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            # scipy warns (DegenerateDataWarning, RuntimeWarning) and returns NaN where BCa is undefined
            warnings.simplefilter("ignore")
            ci = sps.bootstrap((values,), _mean, n_resamples=n_resamples, vectorized=True, confidence_level=level,
                               method=method, rng=np.random.default_rng(seed)).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            return mean, float(ci.low), float(ci.high)
    return mean, mean, mean


def bootstrap_ci(values: np.ndarray, n_bootstrap: int, seed: int, level: float = 0.95,
                 groups: np.ndarray | None = None) -> tuple[float, float, float]:
    """BCa interval over groups (e.g. prompts): `bca_interval(group_means(values, groups))`.

    With groups, the estimate is the mean of per-group means (each prompt weighs the same).
    """
    values = np.asarray(values, dtype=float)
    return bca_interval(values if groups is None else group_means(values, groups), n_bootstrap, seed, level)


def paired_bootstrap_diff(a: np.ndarray, b: np.ndarray, n_bootstrap: int, seed: int,
                          groups: np.ndarray | None = None) -> tuple[float, float, float]:
    """Mean of a - b (paired, same prompts/samples) with a BCa interval over groups."""
    return bootstrap_ci(np.asarray(a, float) - np.asarray(b, float), n_bootstrap, seed, groups=groups)


def ratio_difference(num_a: np.ndarray, den_a: np.ndarray, num_b: np.ndarray | None = None,
                     den_b: np.ndarray | None = None, n_resamples: int = 1000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """sum(num_a)/sum(den_a) [- sum(num_b)/sum(den_b)] with a BCa interval that resamples groups.

    Each array holds one count per group (a question), aligned by position across a and b (paired groups).
    A rate among eligible replies (misaligned among coherent, unleaked ones) is such a ratio: a question
    with no eligible reply weighs nothing instead of being dropped from one arm only. Percentile interval
    where BCa is undefined; a NaN interval when either rate rests on fewer than two questions (no verdict can
    rest on it);
    NaN throughout when a denominator is 0.
    """
    arrays = [np.asarray(x, float) for x in (num_a, den_a) + ((num_b, den_b) if num_b is not None else ())]
    used = np.any([x > 0 for x in arrays[1::2]], axis=0)  # a group no arm asked or could count carries nothing
    arrays = [x[used] for x in arrays]

    def stat(*xs, axis=-1):
        with np.errstate(invalid="ignore", divide="ignore"):
            r = xs[0].sum(axis) / xs[1].sum(axis)
            return r - xs[2].sum(axis) / xs[3].sum(axis) if len(xs) == 4 else r

    if not len(arrays[0]):
        return float("nan"), float("nan"), float("nan")
    value = float(stat(*arrays))
    if not np.isfinite(value) or min((den > 0).sum() for den in arrays[1::2]) < 2:
        return value, float("nan"), float("nan")  # a rate resting on one question cannot be resampled
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ci = sps.bootstrap(tuple(arrays), stat, n_resamples=n_resamples, paired=True, vectorized=True,
                               confidence_level=level, method=method,
                               rng=np.random.default_rng(seed)).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            return value, float(ci.low), float(ci.high)
    return value, float("nan"), float("nan")  # e.g. resamples that leave an arm with nothing eligible
