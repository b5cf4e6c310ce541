"""Statistics shared by the finder and the steering evaluation: paired permutation tests,
Benjamini-Hochberg FDR, bootstrap intervals. All vectorised over latents."""

from __future__ import annotations

import numpy as np
import torch


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
    """One-sided p-values (trait > neutral) from a sign-flip permutation test on paired differences.

    Swapping the labels of a matched pair flips the sign of its difference, so this is the
    exact "shuffle the labels within pairs" null. p = (1 + #{null >= observed}) / (1 + n_permutations).
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


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH q-values (monotone adjusted p-values) for an array of p-values."""
    p = np.asarray(p, dtype=float)
    n = len(p)
    if n == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(q, 1.0)
    return out


def bootstrap_ci(values: np.ndarray, n_bootstrap: int, seed: int, level: float = 0.95,
                 groups: np.ndarray | None = None) -> tuple[float, float, float]:
    """Mean and percentile bootstrap interval; resamples whole groups (e.g. prompts) when given."""
    values = np.asarray(values, dtype=float)
    if groups is None:
        groups = np.arange(len(values))
    keep = np.isfinite(values)  # unscorable replies (NaN) are dropped, and counted as missing by the caller
    values, groups = values[keep], np.asarray(groups)[keep]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    members = [values[groups == g] for g in uniq]
    sums = np.array([m.sum() for m in members])
    counts = np.array([len(m) for m in members])
    idx = rng.integers(0, len(uniq), size=(n_bootstrap, len(uniq)))
    means = sums[idx].sum(1) / counts[idx].sum(1)
    alpha = (1 - level) / 2
    return float(values.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_bootstrap_diff(a: np.ndarray, b: np.ndarray, n_bootstrap: int, seed: int,
                          groups: np.ndarray | None = None) -> tuple[float, float, float]:
    """Mean of a - b (paired, same prompts/samples) with a bootstrap interval over groups."""
    return bootstrap_ci(np.asarray(a, float) - np.asarray(b, float), n_bootstrap, seed, groups=groups)
