"""Reused vs new: which latents of an SAE trained on the post-trained model were already in the base model's SAE.

A post-trained latent is *reused* when its decoder direction has a base-SAE decoder direction within the match
threshold (cosine), *new* otherwise. The threshold comes from a null that keeps everything but the alignment:
the post-trained SAE's decoder turned by Haar-random rotations of the residual stream (same geometry among its
own latents, no relation to the base SAE's). The threshold is the `null_quantile` of the rotated latents' best
cosines on half of the rotations; the other half measures the false-match rate it actually gives.

How many latents would fail to match even without post-training is a separate question: the same comparison
between two seeds of the base SAE (same model, data and shape; only initialisation and data order differ) is the
ceiling for "reused" that SAE training noise allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as sps


@dataclass
class Match:
    """Each latent of SAE `a`'s best cosine with any latent of SAE `b`, and which one."""

    best_cos_F: np.ndarray
    best_index_F: np.ndarray


def unit_rows(W_FD: torch.Tensor) -> torch.Tensor:
    W = W_FD.detach().float().cpu()
    return W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def best_match(a_FD: torch.Tensor, b_GD: torch.Tensor, chunk: int = 2048) -> Match:
    """For every row of `a`, the largest cosine with any row of `b` (decoder directions, sign kept)."""
    a, b = unit_rows(a_FD), unit_rows(b_GD)
    best, idx = [], []
    for s in range(0, len(a), chunk):
        v, i = (a[s:s + chunk] @ b.T).max(dim=1)
        best.append(v)
        idx.append(i)
    return Match(torch.cat(best).numpy(), torch.cat(idx).numpy())


def random_rotation(d: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random orthogonal d x d matrix (QR of a Gaussian, signs fixed by R's diagonal)."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


def rotation_null(a_FD: torch.Tensor, b_GD: torch.Tensor, n_rotations: int, seed: int) -> np.ndarray:
    """Best cosines (R x F) of `a`'s latents, rotated at random, with `b`'s."""
    g = torch.Generator().manual_seed(seed)
    a = unit_rows(a_FD)
    return np.stack([best_match(a @ random_rotation(a.shape[1], g).T, b_GD).best_cos_F for _ in range(n_rotations)])


def proportion(k: int, n: int) -> dict:
    """k / n with its Wilson 95% interval (scipy's binomtest)."""
    if n == 0:
        return {"share": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "k": 0, "n": 0}
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return {"share": k / n, "ci_low": float(ci.low), "ci_high": float(ci.high), "k": int(k), "n": int(n)}


def reused_vs_new(post_FD: torch.Tensor, base_GD: torch.Tensor, alive_F: np.ndarray, n_rotations: int,
                  null_quantile: float, seed: int) -> dict:
    """Split the post-trained SAE's live latents into reused and new against the base SAE.

    Returns the threshold, its measured false-match rate on held-out rotations, the reused share with a Wilson
    interval, the per-latent best cosine and match (all latents; `alive_F` marks the ones counted)."""
    if n_rotations < 2:
        raise ValueError("n_rotations: need at least 2 (half set the threshold, half check it)")
    alive_F = np.asarray(alive_F, dtype=bool)
    match = best_match(post_FD, base_GD)
    null_RF = rotation_null(post_FD, base_GD, n_rotations, seed)[:, alive_F]
    fit, check = null_RF[: n_rotations // 2], null_RF[n_rotations // 2:]
    threshold = float(np.quantile(fit, null_quantile))
    reused_F = (match.best_cos_F > threshold) & alive_F
    return {"threshold": threshold, "null_quantile": null_quantile, "n_rotations": n_rotations,
            "false_match_rate": float((check > threshold).mean()),
            "null_best_cos_median": float(np.median(null_RF)),
            "reused": proportion(int(reused_F.sum()), int(alive_F.sum())),
            "n_dead": int((~alive_F).sum()), "reused_F": reused_F, "best_cos_F": match.best_cos_F,
            "best_index_F": match.best_index_F}
