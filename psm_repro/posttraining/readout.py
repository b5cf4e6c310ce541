"""Reading the base, post-trained and control models through the base model's SAE.

- transfer: the SAE's held-out FVU and CE loss recovered on each model's activations, per corpus slice (Kissane
  et al.'s test of whether a base SAE still reads a fine-tuned model);
- the model diff: mean latent activity over the same assistant turns (fixed text, teacher-forced) in each model;
  latents are ranked by how much more they rise from base to post-trained than from base to control (so the
  control's changes are the null), on one half of the turns, and tested on the other half;
- what the top risers are: the share that a shipped persona's narrative contrast picks out in the base model,
  against density-matched random latents, with a BCa interval over the paired latents.
"""

from __future__ import annotations

import numpy as np
import torch

from psm_repro.core import stats
from psm_repro.core.chat import encode_chat
from psm_repro.core.finder import item_activations
from psm_repro.core.hooked import HookedModel
from psm_repro.em.chain import diff_latents
from psm_repro.pipeline.sweep import closest_latent
from psm_repro.sae_training.evaluate import evaluate


def transfer(models: dict[str, HookedModel], sae, hook_name: str, heldout: dict[str, list[list[int]]]) -> list[dict]:
    """One row per (model, slice): FVU, CE loss recovered, L0, the clean and spliced losses."""
    rows = []
    for name, model in models.items():
        for slice_name, seqs in heldout.items():
            m = evaluate(model, sae, hook_name, seqs, batch=8, desc=f"SAE transfer ({name}, {slice_name})")
            rows.append({"model": name, "slice": slice_name, "tokens": m["tokens"], "fvu": m["fvu"], "l0": m["l0"],
                         "ce_clean": m["ce_clean"], "ce_with_sae": m["ce_with_sae"],
                         "ce_loss_recovered": m["ce_loss_recovered"]})
    return rows


def turn_latents(model: HookedModel, sae, chats: list[list[dict]], batch_size: int = 16) -> torch.Tensor:
    """(N, F) mean SAE latents over the content tokens of each chat's last assistant turn."""
    items = [encode_chat(model.tokenizer, c) for c in chats]
    return item_activations(model, sae, items, "mean", batch_size, desc="diff encoding").latents_NF


def model_diff(post_NF: torch.Tensor, control_NF: torch.Tensor, base_NF: torch.Tensor, top_n: int,
               n_permutations: int, seed: int) -> dict:
    """`em.chain.diff_latents` with post-trained for narrow: ranked by (post - base) - (control - base) on a seeded
    half of the turns, one-sided sign-flip p on the other half. Adds BH q-values over the top latents."""
    from types import SimpleNamespace

    res = diff_latents(post_NF, control_NF, base_NF, SimpleNamespace(diff_top_n=top_n, n_permutations=n_permutations),
                       seed)
    res["top_q"] = stats.benjamini_hochberg(res["top_p"].numpy())
    return res


def density_matched(latents: list[int], freq_F: torch.Tensor, norms_F: torch.Tensor, seed: int,
                    exclude: set[int]) -> list[int]:
    """For each latent, the unused latent closest in firing frequency and decoder norm (as the steering controls)."""
    taken = set(exclude) | set(latents)
    out = []
    for i, f in enumerate(latents):
        r = closest_latent(freq_F, norms_F, f, seed + i, taken)
        out.append(r)
        taken.add(r)
    return out


def share_vs_random(top: list[int], matched: list[int], member_F: np.ndarray, n_bootstrap: int, seed: int) -> dict:
    """Share of `top` latents in a set (member_F, boolean over latents), the matched random latents' share, and the
    paired difference with a BCa interval over the pairs."""
    a = member_F[np.asarray(top, dtype=int)].astype(float)
    b = member_F[np.asarray(matched, dtype=int)].astype(float)
    d, lo, hi = stats.paired_bootstrap_diff(a, b, n_bootstrap, seed)
    return {"n": len(top), "share": float(a.mean()) if len(a) else float("nan"),
            "random_share": float(b.mean()) if len(b) else float("nan"), "diff": d, "ci_low": lo, "ci_high": hi}
