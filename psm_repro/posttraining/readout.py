"""Reading the base, post-trained and control models through the base model's SAE.

- transfer: the SAE's held-out FVU and CE loss recovered on each model's activations, per corpus slice (Kissane
  et al.'s test of whether a base SAE still reads a fine-tuned model);
- the model diff: mean latent activity over the same assistant turns (fixed text, teacher-forced) in each model;
  a riser rises from base to post-trained and above the control fine-tune (so the control's changes are the
  null), selected on one half of the turns and tested on the other half;
- what the top risers are: the share that a shipped persona's narrative contrast picks out in the base model,
  against density-matched random latents, with a BCa interval over the paired latents.
"""

from __future__ import annotations

import numpy as np
import torch

from psm_repro.core import stats
from psm_repro.core.chat import encode_chat
from psm_repro.core.finder import ItemActs, item_activations
from psm_repro.core.hooked import HookedModel
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


def turn_latents(model: HookedModel, sae, chats: list[list[dict]], batch_size: int = 16) -> ItemActs:
    """SAE latents over the content tokens of each chat's last assistant turn: the mean per turn (`latents_NF`)
    and where each latent peaks (`argmax_NF`)."""
    items = [encode_chat(model.tokenizer, c) for c in chats]
    return item_activations(model, sae, items, "mean", batch_size, desc="diff encoding")


def where_it_fires(acts: ItemActs, feature: int, tokenizer, n: int = 3) -> tuple[str, str]:
    """What a riser reads in the post-trained model: the token where it peaks in each of the `n` turns it is most
    active on, and the best turn's peak in context."""
    order = torch.argsort(acts.latents_NF[:, feature], descending=True)[:n].tolist()
    tokens, context = [], ""
    for rank, i in enumerate(order):
        if acts.latents_NF[i, feature] <= 0:
            break
        ids, pos = acts.tokens[i], int(acts.argmax_NF[i, feature])
        tokens.append(repr(tokenizer.decode([ids[pos]])))
        if rank == 0:
            left = tokenizer.decode(ids[max(0, pos - 12):pos], skip_special_tokens=True)
            right = tokenizer.decode(ids[pos + 1:pos + 4], skip_special_tokens=True)
            context = f"...{left}[[{tokenizer.decode([ids[pos]])}]]{right}...".replace("\n", " ")
    return " ".join(tokens), context


def model_diff(post_NF: torch.Tensor, control_NF: torch.Tensor, base_NF: torch.Tensor, top_n: int,
               n_permutations: int, seed: int) -> dict:
    """Latents that post-training raised: above the base model AND above the control fine-tune.

    The turns are split at random with `seed` into a selection half and a test half. On the selection half a latent
    scores min(mean(post - base), mean(post - control)): a riser must rise from base, and by more than any
    fine-tune raises it (a latent the control lowers while post-training leaves it alone is no riser). The top
    `top_n` by that score are tested on the other half: one-sided sign-flip p of each contrast, p = the larger of
    the two (intersection-union: both must hold), q its BH correction over the top latents.

    Returns order / rank_of (all latents, by the selection score), top, top_p, top_q, and rise_vs_control,
    rise_vs_base, effect (d_z of post - control) over all turns.
    """
    n = len(post_NF)
    if n < 8:
        raise ValueError(f"model_diff: need at least 8 turns to select on one half and test on the other, got {n}")
    vs_control, vs_base = post_NF - control_NF, post_NF - base_NF
    rows = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    select, test = rows[: n // 2], rows[n // 2:]
    score = torch.minimum(vs_control[select].mean(0), vs_base[select].mean(0))
    order = torch.argsort(score, descending=True)
    top = order[:top_n]
    gen = torch.Generator().manual_seed(seed)
    p = torch.maximum(stats.sign_flip_pvalues(vs_control[test][:, top], n_permutations, gen),
                      stats.sign_flip_pvalues(vs_base[test][:, top], n_permutations, gen))
    rank_of = torch.empty_like(order)
    rank_of[order] = torch.arange(1, len(order) + 1)
    return {"order": order, "rank_of": rank_of, "top": top, "top_p": p,
            "top_q": stats.benjamini_hochberg(p.numpy()), "rise_vs_control": vs_control.mean(0),
            "rise_vs_base": vs_base.mean(0), "effect": stats.paired_effect(vs_control)}


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
