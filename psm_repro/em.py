"""Emergent misalignment in miniature: fine-tune on a narrow bad behaviour, measure broad misalignment,
diff SAE latents against a control fine-tune, locate the toxic-persona latent, steer it both ways.

Every model variant (base, control, narrow) is the same HF model class with the same hooks, so the SAE
trained on the base model reads all three at the same layer (the usual model-diffing assumption).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from psm_repro import stats
from psm_repro.behaviour import distinct_n, reply_logprobs, teacher_forced_rows
from psm_repro.chat import encode_chat, encode_prompt
from psm_repro.config import EMConfig
from psm_repro.em_data import EMData
from psm_repro.finder import item_activations
from psm_repro.hooked import HookedModel
from psm_repro.memory import rows_that_fit
from psm_repro.steering import Intervention, generate, steer

logger = logging.getLogger(__name__)

GENERATION_BATCH = 64


@dataclass
class Replies:
    """Sampled replies to the broad questions, one row per (method, coefficient, question, sample)."""

    method: np.ndarray
    coefficient: np.ndarray
    question: np.ndarray
    texts: list[str]
    distinct2: np.ndarray


def sample_replies(model: HookedModel, sae, questions: list[str], cfg: EMConfig, seed: int,
                   arms: list[tuple[str, float, Intervention | None]]) -> Replies:
    """Generate every arm x question x sample in batches; each row carries its own intervention."""
    rows = [(a, q, s) for a in range(len(arms)) for q in range(len(questions)) for s in range(cfg.samples_per_question)]
    prompts = [encode_prompt(model.tokenizer, [{"role": "user", "content": q}]) for q in questions]
    batch = rows_that_fit(model, max(map(len, prompts)) + cfg.max_new_tokens, GENERATION_BATCH)
    texts, distinct = [], []
    for b in tqdm(range(0, len(rows), batch), desc=f"sampling {len(rows)} replies", leave=False):
        chunk = rows[b:b + batch]
        ids = [prompts[q] for _, q, _ in chunk]
        arm_of = np.array([a for a, _, _ in chunk])
        ivs, coef = [], torch.tensor([arms[a][1] for a, _, _ in chunk])
        for a, (_, _, iv) in enumerate(arms):
            if iv is not None and (arm_of == a).any():
                ivs.append(Intervention(mode=iv.mode, feature=iv.feature, scale=iv.scale,
                                        rows=torch.from_numpy(arm_of == a)))
        with steer(model, sae, ivs, coef) if ivs else contextlib.nullcontext():
            out, _ = generate(model, ids, cfg.max_new_tokens, cfg.temperature, seed + b)
        texts += [model.tokenizer.decode(o, skip_special_tokens=True).strip() for o in out]
        distinct += [distinct_n(o) for o in out]
    return Replies(method=np.array([arms[a][0] for a, _, _ in rows]), coefficient=np.array([arms[a][1] for a, _, _ in rows]),
                   question=np.array([q for _, q, _ in rows]), texts=texts, distinct2=np.array(distinct))


def rate_with_ci(flags: np.ndarray, questions: np.ndarray, cfg: EMConfig, seed: int) -> dict:
    """Misalignment rate (mean of per-question rates) with a BCa interval over questions."""
    mean, lo, hi = stats.bca_interval(stats.group_means(flags.astype(float), questions), cfg.n_bootstrap, seed)
    return {"rate": mean, "ci_low": lo, "ci_high": hi, "n": int(len(flags))}


def paired_difference(a: np.ndarray, qa: np.ndarray, b: np.ndarray, qb: np.ndarray, cfg: EMConfig, seed: int) -> dict:
    """Mean of a - b with a BCa interval over questions (per-question means are paired)."""
    qs = np.intersect1d(qa, qb)
    per_q = np.array([a[qa == q].mean() - b[qb == q].mean() for q in qs])
    mean, lo, hi = stats.bca_interval(per_q, cfg.n_bootstrap, seed)
    return {"diff": mean, "ci_low": lo, "ci_high": hi}


def in_domain_contrast(model: HookedModel, data: EMData, items: list, cfg: EMConfig) -> dict:
    """Held-out narrow-domain items: mean log-prob of the harmful answer minus the good one (per token)."""
    prompts = [it.user for it in items]
    rows_h, starts_h = teacher_forced_rows(model, prompts, [it.harmful for it in items])
    rows_g, starts_g = teacher_forced_rows(model, prompts, [it.good for it in items])
    lp = reply_logprobs(model, rows_h + rows_g, starts_h + starts_g)
    diff = lp[: len(items)] - lp[len(items):]
    mean, lo, hi = stats.bca_interval(diff, cfg.n_bootstrap, 0)
    return {"harmful_minus_good_logprob": mean, "ci_low": lo, "ci_high": hi, "n_items": len(items)}


def reply_latents(model: HookedModel, sae, questions: list[str], replies: list[str]) -> torch.Tensor:
    """(N, F) mean SAE latents over the reply tokens of fixed (question, reply) chats."""
    items = [encode_chat(model.tokenizer, [{"role": "user", "content": q}, {"role": "assistant", "content": r or "."}])
             for q, r in zip(questions, replies)]
    return item_activations(model, sae, items, "mean", 16, desc="diff encoding").latents_NF


def diff_latents(narrow_NF: torch.Tensor, control_NF: torch.Tensor, base_NF: torch.Tensor, cfg: EMConfig,
                 seed: int, groups: np.ndarray | None = None) -> dict:
    """Rank latents by how much more they fire in the narrow model than in the control fine-tune.

    The p-values hold although the tested latents are the best of thousands, because selection and
    test use disjoint questions: the questions (`groups`, one id per row; each row is its own group
    when None) are split at random with `seed` into a selection half and a test half. Latents are
    ranked by their mean rise (narrow - control) on the selection half (`order`, `rank_of`, and
    `top` = the first cfg.diff_top_n); `top_p` is a one-sided sign-flip p-value for each top latent
    computed on the test half only, over its per-question mean differences (replies to one question
    are not independent). `rise_vs_control`, `rise_vs_base` and `effect` (d_z) describe all rows.

    Returns a dict with those keys plus `select_groups` and `test_groups` (the question ids of each half).
    """
    diff = narrow_NF - control_NF
    groups = np.arange(len(diff)) if groups is None else np.asarray(groups)
    ids = np.random.default_rng(seed).permutation(np.unique(groups))
    if len(ids) < 4:
        raise ValueError(f"diff_latents: need at least 4 questions to select on one half and test on the other, got {len(ids)}")
    select_ids, test_ids = np.sort(ids[: len(ids) // 2]), np.sort(ids[len(ids) // 2:])
    select_rows = torch.from_numpy(np.isin(groups, select_ids))
    order = torch.argsort(diff[select_rows].mean(0), descending=True)
    top = order[: cfg.diff_top_n]
    test_rows = np.isin(groups, test_ids)
    _, slot = np.unique(groups[test_rows], return_inverse=True)
    slot = torch.from_numpy(slot)
    per_q = torch.zeros(len(test_ids), len(top)).index_add_(0, slot, diff[torch.from_numpy(test_rows)][:, top])
    per_q /= torch.bincount(slot, minlength=len(test_ids)).unsqueeze(1)
    p = stats.sign_flip_pvalues(per_q, cfg.n_permutations, torch.Generator().manual_seed(seed))
    rank_of = torch.empty_like(order)
    rank_of[order] = torch.arange(1, len(order) + 1)
    return {"order": order, "rank_of": rank_of, "rise_vs_control": diff.mean(0),
            "rise_vs_base": (narrow_NF - base_NF).mean(0), "effect": stats.paired_effect(diff), "top": top,
            "top_p": p, "select_groups": select_ids, "test_groups": test_ids}



def arm_table(context: str, replies: Replies, flags: np.ndarray, features: dict[str, int], cfg: EMConfig,
              seed: int) -> list[dict]:
    """One row per arm: misalignment rate, change vs unsteered, and latent vs random at the same strength."""
    rows = []
    base = replies.method == "unsteered"
    for method, coef in dict.fromkeys(zip(replies.method.tolist(), replies.coefficient.tolist())):
        m = (replies.method == method) & (replies.coefficient == coef)
        row = {"context": context, "method": method, "coefficient": coef,
               "feature": features.get(method.split("_")[0], ""),
               **rate_with_ci(flags[m], replies.question[m], cfg, seed),
               "distinct2": float(np.nanmean(replies.distinct2[m]))}
        d = paired_difference(flags[m], replies.question[m], flags[base], replies.question[base], cfg, seed)
        row.update({"delta_vs_unsteered": d["diff"], "delta_ci_low": d["ci_low"], "delta_ci_high": d["ci_high"]})
        if method.startswith("latent_"):
            r = (replies.method == "random_" + method.split("_", 1)[1]) & (replies.coefficient == coef)
            v = paired_difference(flags[m], replies.question[m], flags[r], replies.question[r], cfg, seed)
            row.update({"vs_random": v["diff"], "vs_random_ci_low": v["ci_low"], "vs_random_ci_high": v["ci_high"]})
        rows.append(row)
    return rows


def render_summary(s: dict) -> str:
    """The result card people read (summary.md)."""
    h = s["headline"]
    lines = [f"# Emergent misalignment: {s['data']} on {s['model']} / {s['sae']}", "",
             f"Narrow fine-tune: {s['finetune']['narrow']['chats']} chats of {s['domain']} with subtly harmful "
             f"answers; control: the same user turns with good answers (LoRA r={s['finetune']['narrow']['lora_rank']}, "
             f"{s['finetune']['narrow']['epochs']} epochs, {s['finetune']['narrow']['seconds']:.0f} s + "
             f"{s['finetune']['control']['seconds']:.0f} s on {s['device']}). Broad evaluation: "
             f"{s['n_questions']} unrelated open questions x {s['samples_per_question']} samples, offline judge "
             f"(MiniLM probe, 5-fold AUROC {s['judge_auroc']:.2f}; P(misaligned) > {s['judge_threshold']}). "
             "Intervals: 95% BCa bootstrap over per-question means.", "",
             "## Did narrow fine-tuning produce broad misalignment?", "",
             "| model | misaligned rate [95% CI] | mean P(misaligned) | distinct-2 | held-out in-domain log-prob harmful - good |",
             "|---|---|---|---|---|"]
    for r in s["misalignment"]:
        lines.append(f"| {r['model']} | {r['rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['mean_score']:.3f} | "
                     f"{r['distinct2']:.2f} | {r['in_domain']['harmful_minus_good_logprob']:+.3f} "
                     f"[{r['in_domain']['ci_low']:+.3f}, {r['in_domain']['ci_high']:+.3f}] |")
    for key, label in (("narrow_vs_control", "narrow - control"), ("narrow_vs_base", "narrow - base")):
        d = h[key]
        lines.append(f"\n{label}: {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]")
    lines += ["", f"**Answer: {h['broad_misalignment_answer']}**", "",
              "## Model diff: latents that rise from the control to the narrow fine-tune", "",
              f"Mean latent activation over the reply tokens of the base model's {s['n_diff_items']} broad-question "
              "replies, read in each model (same text, so only the model differs). Ranks come from a random half "
              "of the questions; p is a one-sided sign-flip test on the other half's per-question means, so it "
              "is not inflated by picking the top latents. Rises and d_z use all replies.", "",
              f"Toxic-persona latent (top shared latent of `find persona={s['persona']}` on the base model): "
              f"**{h['toxic_latent']}**, rank **{h['toxic_rank']}** of {s['d_sae']} (a random latent's rank would "
              f"be at or above this with probability {h['toxic_rank'] / s['d_sae']:.2f}). Best rank among the "
              f"persona's top-10 shared latents: {h['toxic_top10_best_rank']}.", "",
              "| rank | latent | rise vs control | rise vs base | d_z | p (held-out half) | toxic narrative d |",
              "|---|---|---|---|---|---|---|"]
    for r in s["diff_top"][:10]:
        lines.append(f"| {r['rank']} | {r['feature']} | {r['rise_vs_control']:.4f} | {r['rise_vs_base']:.4f} | "
                     f"{r['effect']:.2f} | {r['p']:.4f} | {r['toxic_narrative_effect']:.2f} |")
    lines += ["", "## Causal checks: steering with the top diffed latent", "",
              f"Latent {h['steer_latent']} vs a frequency- and norm-matched random latent {h['random_latent']}, same "
              "strengths. Amplify: base model, add. Suppress: narrow model, ablate (clamp to 0, SAE error kept) "
              "and add with a negative coefficient.", "",
              "| context | arm | coef | misaligned rate [CI] | vs unsteered | latent - random | distinct-2 |",
              "|---|---|---|---|---|---|---|"]
    for r in s["steering"]:
        vr = (f"{r['vs_random']:+.3f} [{r['vs_random_ci_low']:+.3f}, {r['vs_random_ci_high']:+.3f}]"
              if "vs_random" in r else "")
        lines.append(f"| {r['context']} | {r['method']} | {r['coefficient']} | {r['rate']:.3f} [{r['ci_low']:.3f}, "
                     f"{r['ci_high']:.3f}] | {r['delta_vs_unsteered']:+.3f} [{r['delta_ci_low']:+.3f}, "
                     f"{r['delta_ci_high']:+.3f}] | {vr} | {r['distinct2']:.2f} |")
    lines += ["", f"Amplify beats the random latent: **{'yes' if h['amplify_beats_random'] else 'no'}**. "
              f"Suppress (ablate) beats the random latent: **{'yes' if h['suppress_beats_random'] else 'no'}**.", "",
              f"Run time {s['seconds']:.0f} s. Files: misalignment.csv, diff.csv, steering.csv, samples.jsonl, "
              "manifest.json; LoRA adapters (safetensors) in the run directory's adapters/ (not committed)."]
    return "\n".join(lines) + "\n"
