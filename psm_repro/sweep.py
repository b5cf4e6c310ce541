"""A steering sweep with controls, batched: methods x coefficients x prompts x samples in one batch.

Methods (every run):
* sae_latent      the finder's latent, injected with `steer.mode`;
* random_latent   a latent matched on activation frequency (and decoder norm) to the chosen one;
* dense_direction the finder's difference-of-means direction, added at the latent's vector norm;
* unsteered       coefficient 0;
* system_prompt   no steering; a system prompt asks for the trait (the prompting baseline).
Eval prompts are split in two: the coefficient is chosen on the dev half, reported on the test half.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from psm_repro import stats
from psm_repro.behaviour import (EmbeddingJudge, coherence_collapsed, distinct_n, perplexities, reply_logprobs,
                                 teacher_forced_rows)
from psm_repro.chat import encode_prompt
from psm_repro.config import SteerConfig
from psm_repro.finder import FinderResult
from psm_repro.hooked import HookedModel
from psm_repro.memory import rows_that_fit
from psm_repro.personas import Persona
from psm_repro.steering import Intervention, generate, steer, steering_vector

logger = logging.getLogger(__name__)

STEERED = ("sae_latent", "random_latent", "dense_direction")
STEERING_COLUMNS = ["method", "feature", "coefficient", "split", "trait_score", "trait_ci_low", "trait_ci_high",
                    "delta_vs_unsteered", "delta_ci_low", "delta_ci_high", "contrast_logprob", "contrast_ci_low",
                    "contrast_ci_high", "coherence", "perplexity", "distinct2", "collapsed", "vector_norm_ratio",
                    "judge_auroc", "judge", "n"]
GENERATION_BATCH = 48


@dataclass
class Row:
    method: str
    coefficient: float
    prompt: int
    sample: int


def _lap(stage: str, n: int, start: float) -> float:
    now = time.perf_counter()
    logger.info("%s: %d rows in %.1f s", stage, n, now - start)
    return now


def matched_random_latent(found: FinderResult, sae, feature: int, seed: int, exclude: set[int]) -> int:
    """The random-latent control for the finder's latent, matched on search-set statistics."""
    return closest_latent(found.frequency_F, sae.W_dec.float().norm(dim=-1).cpu(), feature, seed, exclude,
                          usable_F=found.max_activation_F > 0)


def closest_latent(freq_F: torch.Tensor, norms_F: torch.Tensor, feature: int, seed: int, exclude: set[int],
                   usable_F: torch.Tensor | None = None) -> int:
    """A latent whose firing frequency and decoder norm are closest to `feature`'s (ties broken by seed)."""
    dist = (freq_F - freq_F[feature]).abs() / (freq_F[feature] + 1e-6) + (norms_F - norms_F[feature]).abs() / norms_F[feature]
    dist = dist + torch.rand(len(dist), generator=torch.Generator().manual_seed(seed)) * 1e-6
    for f in exclude | {feature}:
        dist[f] = float("inf")
    dist[~(freq_F > 0 if usable_F is None else usable_F)] = float("inf")
    return int(torch.argmin(dist))


def build_interventions(sae, found: FinderResult, cfg: SteerConfig, feature: int, random_feature: int):
    scale = float(found.max_activation_F[feature])
    latent_norm = float(steering_vector(sae, Intervention(feature=feature, scale=scale)).norm())
    return {
        "sae_latent": Intervention(mode=cfg.mode, feature=feature, scale=scale),
        "random_latent": Intervention(mode=cfg.mode, feature=random_feature,
                                      scale=float(found.max_activation_F[random_feature])),
        "dense_direction": Intervention(mode="add", direction=found.dense_direction_D, scale=latent_norm),
    }


def _steer_ctx(model, sae, ivs: dict[str, Intervention], rows: list[Row], cfg: SteerConfig, width: int):
    methods = np.array([r.method for r in rows])
    active = [Intervention(mode=iv.mode, feature=iv.feature, direction=iv.direction, scale=iv.scale,
                           rows=torch.from_numpy(methods == name)) for name, iv in ivs.items()]
    coef = torch.tensor([r.coefficient if r.method in STEERED else 0.0 for r in rows])
    return steer(model, sae, active, coef, positions=cfg.positions, prompt_width=width,
                 steer_special=cfg.steer_special)


def run_sweep(model: HookedModel, sae, persona: Persona, found: FinderResult, cfg: SteerConfig, seed: int,
              feature: int) -> dict:
    """Generate, score and summarise the whole sweep; returns rows for steering.csv, samples and headline."""
    random_feature = matched_random_latent(found, sae, feature, seed, exclude={r["feature"] for r in found.rows[:20]})
    ivs = build_interventions(sae, found, cfg, feature, random_feature)
    coefs = [c for c in cfg.coefficients if c != 0]
    prompts = persona.prompts[: cfg.n_prompts]
    system = f"Play this role in your reply: {persona.description}"
    rows = [Row("unsteered", 0.0, p, s) for p in range(len(prompts)) for s in range(cfg.samples_per_prompt)]
    rows += [Row("system_prompt", 0.0, p, s) for p in range(len(prompts)) for s in range(cfg.samples_per_prompt)]
    rows += [Row(m, c, p, s) for m in STEERED for c in coefs for p in range(len(prompts))
             for s in range(cfg.samples_per_prompt)]

    def prompt_ids(r: Row) -> list[int]:
        msgs = [{"role": "user", "content": prompts[r.prompt]}]
        if r.method == "system_prompt":
            msgs = [{"role": "system", "content": system}] + msgs
        return encode_prompt(model.tokenizer, msgs)

    clock = time.perf_counter()
    replies: list[list[int]] = []
    all_ids = [prompt_ids(r) for r in rows]
    batch = rows_that_fit(model, max(map(len, all_ids)) + cfg.max_new_tokens, GENERATION_BATCH)
    for b in tqdm(range(0, len(rows), batch), desc="steered generation"):
        chunk = rows[b:b + batch]
        ids = all_ids[b:b + batch]
        width = max(len(x) for x in ids)
        with _steer_ctx(model, sae, ivs, chunk, cfg, width):
            out, _ = generate(model, ids, cfg.max_new_tokens, cfg.temperature, seed + b)
        replies += out
    texts = [model.tokenizer.decode(r, skip_special_tokens=True).strip() for r in replies]
    clock = _lap("generation", len(rows), clock)

    judge = EmbeddingJudge.fit(persona.judge.trait_examples, persona.judge.neutral_examples, seed)
    trait = judge.score(texts) if cfg.judge == "embedding" else _llm_scores(persona, prompts, rows, texts, cfg)
    clock = _lap("judge", len(rows), clock)
    ppl = perplexities(model, [prompts[r.prompt] for r in rows], texts)
    distinct = np.array([distinct_n(r) for r in replies])
    clock = _lap("perplexity", len(rows), clock)

    # teacher-forced contrast log-prob on eval pairs, steered the same way
    pairs = persona.pairs[: cfg.n_pairs]
    lp_rows = [Row(m, c, i, k) for m in ("unsteered",) for c in (0.0,) for i in range(len(pairs)) for k in (0, 1)]
    lp_rows += [Row(m, c, i, k) for m in STEERED for c in coefs for i in range(len(pairs)) for k in (0, 1)]
    tf, starts = teacher_forced_rows(model, [pairs[r.prompt].prompt for r in lp_rows],
                                     [pairs[r.prompt].trait if r.sample == 0 else pairs[r.prompt].neutral
                                      for r in lp_rows])
    lp = reply_logprobs(model, tf, starts, batch_size=32,
                        steer_ctx=lambda sl, width: _steer_ctx(model, sae, ivs, lp_rows[sl], cfg, width))
    clock = _lap("contrast log-prob", len(lp_rows), clock)
    lp_rows_arr = np.array([(r.method, r.coefficient, r.prompt, r.sample) for r in lp_rows], dtype=object)

    n_prompts = len(prompts)
    split_of = {p: ("dev" if p % 2 == 0 else "test") for p in range(n_prompts)}
    methods = np.array([r.method for r in rows])
    coef_arr = np.array([r.coefficient for r in rows])
    prompt_arr = np.array([r.prompt for r in rows])
    split_arr = np.array([split_of[p] for p in prompt_arr])
    base_ppl = np.nanmean(ppl[methods == "unsteered"])
    resid = found.resid_norm
    table = []
    for split in ("dev", "test"):
        base_mask = (methods == "unsteered") & (split_arr == split)
        base_by_prompt = {p: trait[base_mask & (prompt_arr == p)].mean() for p in np.unique(prompt_arr[base_mask])}
        cells = [("unsteered", 0.0), ("system_prompt", 0.0)] + [(m, c) for m in STEERED for c in coefs]
        for method, c in cells:
            m = (methods == method) & (coef_arr == c) & (split_arr == split)
            if not m.any():
                continue
            mean, lo, hi = stats.bootstrap_ci(trait[m], cfg.n_bootstrap, seed, groups=prompt_arr[m])
            delta = trait[m] - np.array([base_by_prompt[p] for p in prompt_arr[m]])
            d_mean, d_lo, d_hi = stats.bootstrap_ci(delta, cfg.n_bootstrap, seed, groups=prompt_arr[m])
            cl = _contrast(lp, lp_rows_arr, method if method != "system_prompt" else None, c, cfg, seed, split)
            ppl_m = float(np.nanmean(ppl[m]))
            dist_m = float(np.nanmean(distinct[m]))
            iv = ivs.get(method)
            # add: the injected vector; clamp: the latent's decoder contribution at its target value
            norm = float(steering_vector(sae, iv).norm()) * abs(c) if iv is not None and iv.mode != "ablate" else 0.0
            table.append({
                "method": method, "feature": {"sae_latent": feature, "random_latent": random_feature}.get(method, ""),
                "coefficient": c, "split": split, "trait_score": mean, "trait_ci_low": lo, "trait_ci_high": hi,
                "delta_vs_unsteered": d_mean, "delta_ci_low": d_lo, "delta_ci_high": d_hi,
                "contrast_logprob": cl[0], "contrast_ci_low": cl[1], "contrast_ci_high": cl[2],
                "coherence": float(np.nanmean(-np.log(ppl[m]))), "perplexity": ppl_m, "distinct2": dist_m,
                "collapsed": coherence_collapsed(ppl_m / base_ppl, dist_m), "vector_norm_ratio": norm / resid,
                "judge_auroc": judge.auroc, "judge": cfg.judge, "n": int(np.isfinite(trait[m]).sum()),
            })
    headline = _headline(table, trait, methods, coef_arr, prompt_arr, split_arr, cfg, seed, coefs)
    samples = [{"method": r.method, "coefficient": r.coefficient, "prompt": prompts[r.prompt], "sample": r.sample,
                "split": split_of[r.prompt], "reply": t, "trait_score": float(s), "perplexity": float(p)}
               for r, t, s, p in zip(rows, texts, trait, ppl)]
    return {"table": table, "samples": samples, "headline": headline, "feature": feature,
            "random_feature": random_feature, "judge_auroc": judge.auroc, "judge_reliable": judge.reliable,
            "steering_vector_norm_ratio": float(steering_vector(sae, ivs["sae_latent"]).norm()) / resid}


def _llm_scores(persona: Persona, prompts: list[str], rows: list[Row], texts: list[str], cfg: SteerConfig):
    from psm_repro.embedded import cache_root
    from psm_repro.llm_judge import LLMJudge

    judge = LLMJudge(cfg.llm_judge_model, cache_root() / "llm_judge", usd_per_1k_tokens=cfg.llm_judge_usd_per_1k_tokens)
    verdicts = [judge.score(persona.judge.rubric, prompts[r.prompt], t) for r, t in tqdm(
        list(zip(rows, texts)), desc="LLM judge")]
    return np.array([v.trait / 100 for v in verdicts])


def _contrast(lp, lp_rows, method, c, cfg, seed, split):
    if method is None:
        return float("nan"), float("nan"), float("nan")
    m = (lp_rows[:, 0] == method) & (lp_rows[:, 1] == c)
    idx = np.where(m)[0]
    by_pair = {}
    for i in idx:
        p, k = lp_rows[i, 2], lp_rows[i, 3]
        if (p % 2 == 0) == (split == "dev"):
            by_pair.setdefault(p, [0.0, 0.0])[k] = lp[i]
    diffs = np.array([v[0] - v[1] for v in by_pair.values()])
    return stats.bootstrap_ci(diffs, cfg.n_bootstrap, seed)


def _headline(table, trait, methods, coef_arr, prompt_arr, split_arr, cfg, seed, coefs) -> dict:
    """Pick the coefficient on the dev half; compare methods on the test half at that coefficient."""
    dev = [r for r in table if r["split"] == "dev" and r["method"] == "sae_latent" and not r["collapsed"]]
    if not dev:
        dev = [r for r in table if r["split"] == "dev" and r["method"] == "sae_latent"]
    best = max(dev, key=lambda r: r["trait_score"])["coefficient"]
    test = split_arr == "test"
    out = {"coefficient": best}

    def per_prompt(method, c):
        m = test & (methods == method) & (coef_arr == c)
        return {p: trait[m & (prompt_arr == p)].mean() for p in np.unique(prompt_arr[m])}

    latent = per_prompt("sae_latent", best)
    for control, c in (("unsteered", 0.0), ("random_latent", best), ("dense_direction", best), ("system_prompt", 0.0)):
        other = per_prompt(control, c)
        keys = sorted(set(latent) & set(other))
        mean, lo, hi = stats.paired_bootstrap_diff(np.array([latent[k] for k in keys]),
                                                   np.array([other[k] for k in keys]), cfg.n_bootstrap, seed)
        out[f"vs_{control}"] = {"diff": mean, "ci_low": lo, "ci_high": hi, "beats": bool(lo > 0),
                                "n_prompts": len(keys)}
    # steerability: slope of trait score on coefficient (unsteered = 0), bootstrap over prompts
    m = (methods == "sae_latent") | (methods == "unsteered")
    x, y, g = coef_arr[m], trait[m], prompt_arr[m]
    rng = np.random.default_rng(seed)
    uniq = np.unique(g)
    slopes = []
    for _ in range(cfg.n_bootstrap):
        pick = rng.choice(uniq, len(uniq))
        idx = np.concatenate([np.where(g == p)[0] for p in pick])
        slopes.append(np.polyfit(x[idx], y[idx], 1)[0] if len(np.unique(x[idx])) > 1 else np.nan)
    slope = np.polyfit(x, y, 1)[0] if len(np.unique(x)) > 1 else float("nan")
    out["steerability"] = {"slope": float(slope), "ci_low": float(np.nanquantile(slopes, 0.025)),
                           "ci_high": float(np.nanquantile(slopes, 0.975))}
    return out
