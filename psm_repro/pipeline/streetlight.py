"""The streetlight test: are latents the assistant reuses from narratives more interpretable than latents that
fire on assistant chats only?

The essay suggests that representations reused from pre-training may be systematically easier to interpret
than ones learned in post-training. Among the latents significant on the assistant contrast (BH-FDR), the
finder's "reused" group is also significant on the narrative contrast; the "assistant-only" group is not.
For each interpretability proxy the test reports both group means, their difference with a two-sample BCa
bootstrap interval (latents resampled within groups, `scipy.stats.bootstrap`) and a shuffled-label control
(group labels permuted, `scipy.stats.permutation_test`): the p-value and the middle 95% of the null.

Proxies, from the feature cache (psm_repro/core/feature_cache.py):
- lexicality: share of a latent's top activations taken by its most common token (high: a token detector);
- log10 density: how often it fires on the reference corpus (interpretable latents tend to be sparse);
- context consistency: mean pairwise cosine of MiniLM embeddings of its top contexts (the judge's encoder).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats as sps

from psm_repro.core.feature_cache import FeatureCache

MIN_GROUP = 3
PROXIES = ("lexicality", "log10_density", "context_consistency")


def context_texts(cache: FeatureCache, feature: int, tokenizer, n: int, left: int = 12, right: int = 4) -> list[str]:
    keep = cache.top_values_KF[:, feature] > 0
    pairs = list(zip(cache.top_seq_KF[keep, feature].tolist(), cache.top_pos_KF[keep, feature].tolist()))[:n]
    return [tokenizer.decode(cache.seqs[s][max(0, p - left):p + right + 1], skip_special_tokens=True)
            for s, p in pairs]


def consistency(texts: list[str], encoder) -> float:
    """Mean pairwise cosine similarity of the texts' (unit-norm) embeddings; NaN below two texts."""
    if len(texts) < 2:
        return float("nan")
    e = encoder(texts)
    sim = e @ e.T
    n = len(texts)
    return float((sim.sum() - np.trace(sim)) / (n * (n - 1)))


def compare(a: np.ndarray, b: np.ndarray, n_resamples: int, seed: int) -> dict:
    """mean(a) - mean(b) with a BCa interval (independent samples) and a label-permutation control."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    out = {"n_a": len(a), "n_b": len(b), "mean_a": float(a.mean()) if len(a) else float("nan"),
           "mean_b": float(b.mean()) if len(b) else float("nan")}
    if len(a) < MIN_GROUP or len(b) < MIN_GROUP:
        return out | {"diff": out["mean_a"] - out["mean_b"], "ci_low": float("nan"), "ci_high": float("nan"),
                      "p_shuffled": float("nan"), "null_low": float("nan"), "null_high": float("nan")}

    def diff(x, y, axis=-1):
        return x.mean(axis) - y.mean(axis)

    low = high = float("nan")
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ci = sps.bootstrap((a, b), diff, n_resamples=n_resamples, vectorized=True, method=method,
                               rng=np.random.default_rng(seed)).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            low, high = float(ci.low), float(ci.high)
            break
    perm = sps.permutation_test((a, b), diff, permutation_type="independent", n_resamples=n_resamples,
                                vectorized=True, alternative="two-sided", rng=np.random.default_rng(seed + 1))
    lo, hi = np.quantile(perm.null_distribution, [0.025, 0.975])
    return out | {"diff": float(diff(a, b)), "ci_low": low, "ci_high": high,
                  "p_shuffled": float(perm.pvalue), "null_low": float(lo), "null_high": float(hi)}


def streetlight(cache: FeatureCache, significant_assistant: np.ndarray, significant_narrative: np.ndarray,
                tokenizer, encoder, n_contexts: int, max_latents: int, n_resamples: int, seed: int) -> dict:
    """Reused (significant on assistant and narrative contrasts) vs assistant-only latents, per proxy.

    Lexicality and density are read for every latent of both groups; context consistency (a MiniLM pass) for
    at most `max_latents` per group, a seeded sample."""
    groups = {"reused": np.flatnonzero(significant_assistant & significant_narrative),
              "assistant_only": np.flatnonzero(significant_assistant & ~significant_narrative)}
    rng = np.random.default_rng(seed)
    values: dict[str, dict[str, np.ndarray]] = {}
    for name, g in groups.items():
        sample = np.sort(rng.choice(g, max_latents, replace=False)) if len(g) > max_latents else g
        values[name] = {
            "lexicality": np.array([cache.lexicality(int(f))[0] for f in g]),
            "log10_density": np.log10(np.maximum(cache.density_F[g].numpy(), 1e-9)),
            "context_consistency": np.array([consistency(context_texts(cache, int(f), tokenizer, n_contexts), encoder)
                                             for f in sample]),
        }
    result = {"n_reused": int(len(groups["reused"])), "n_assistant_only": int(len(groups["assistant_only"])),
              "proxies": {}}
    for p in PROXIES:
        result["proxies"][p] = compare(values["reused"][p], values["assistant_only"][p], n_resamples, seed)
    return result
