"""A steering sweep with controls, batched: methods x coefficients x prompts x samples in one batch.

Methods (every run):
* sae_latent      the finder's latent, injected with `steer.mode`;
* random_latent   a latent matched on activation frequency (and decoder norm) to the chosen one;
* dense_direction the finder's difference-of-means direction, added at the latent's vector norm;
* unsteered       coefficient 0;
* system_prompt   no steering; a system prompt asks for the trait (the prompting baseline);
* persona_vector  the persona_vectors recipe's direction, and
* caa_vector      CAA's A/B direction (psm_repro/peers/vectors.py), both added at the latent's vector norm,
                  when the persona has their data.
Eval prompts are split in two: the coefficient is chosen on the dev half, reported on the test half.
`compare_methods` ranks every method at its own dev-chosen coefficient; `ab_table` gives CAA's A/B metric.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from psm_repro.config import JudgeConfig, SteerConfig
from psm_repro.config.sections import MIN_EVAL_ITEMS, SPLIT_WHY
from psm_repro.core import stats
from psm_repro.core.behaviour import coherence_collapsed, distinct_n, perplexities, reply_logprobs, teacher_forced_rows
from psm_repro.core.chat import encode_prompt
from psm_repro.core.finder import FinderResult
from psm_repro.core.hooked import HookedModel
from psm_repro.core.memory import rows_that_fit
from psm_repro.core.personas import Persona
from psm_repro.core.steering import Intervention, generate, steer, steering_vector
from psm_repro.judges.judge import ReferenceLM
from psm_repro.judges.llm_judge import judge_from_config
from psm_repro.judges.validation import judge_for_run
from psm_repro.peers.ab_metric import ab_table
from psm_repro.peers.methods import compare_methods

logger = logging.getLogger(__name__)

STEERED = ("sae_latent", "random_latent", "dense_direction", "persona_vector", "caa_vector")
"""Steered methods in table order; a run has those its data allows (the peer vectors need the peers section)."""
CONTRAST_METHODS = STEERED[:3]
"""The teacher-forced contrast log-prob is measured for the latent and its two controls; the peer vectors are
measured by the headline score and the A/B metric."""
STEERING_COLUMNS = ["method", "feature", "coefficient", "split", "score", "score_ci_low", "score_ci_high",
                    "trait_score", "trait_ci_low", "trait_ci_high", "coherence_score", "coherence_ci_low",
                    "coherence_ci_high", "delta_vs_unsteered", "delta_ci_low", "delta_ci_high", "contrast_logprob",
                    "contrast_ci_low", "contrast_ci_high", "perplexity", "distinct2", "collapsed", "vector_norm_ratio",
                    "judge_auroc", "judge", "judge_valid", "n"]
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


def build_interventions(sae, found: FinderResult, cfg: SteerConfig, feature: int, random_feature: int,
                        directions: dict[str, torch.Tensor] | None = None):
    """The steered methods; dense directions (the finder's, the peer vectors) are unit-normalised and added at the
    latent's vector norm, so every method injects a vector of the same size at coefficient 1."""
    scale = float(found.max_activation_F[feature])
    latent_norm = float(steering_vector(sae, Intervention(feature=feature, scale=scale)).norm())
    dense = {"dense_direction": found.dense_direction_D} | (directions or {})
    return {
        "sae_latent": Intervention(mode=cfg.mode, feature=feature, scale=scale),
        "random_latent": Intervention(mode=cfg.mode, feature=random_feature,
                                      scale=float(found.max_activation_F[random_feature])),
    } | {name: Intervention(mode="add", direction=d.float() / d.float().norm(), scale=latent_norm)
         for name, d in dense.items()}


def _steer_ctx(model, sae, ivs: dict[str, Intervention], rows: list[Row], cfg: SteerConfig, width: int):
    methods = np.array([r.method for r in rows])
    active = [Intervention(mode=iv.mode, feature=iv.feature, direction=iv.direction, scale=iv.scale,
                           rows=torch.from_numpy(methods == name)) for name, iv in ivs.items()]
    coef = torch.tensor([r.coefficient if r.method in ivs else 0.0 for r in rows])
    return steer(model, sae, active, coef, positions=cfg.positions, prompt_width=width,
                 steer_special=cfg.steer_special)


def check_split(persona: Persona, cfg: SteerConfig) -> None:
    """Before the model loads: the eval prompts the sweep uses alternate into a dev and a test half, each with
    enough prompts for its statistics. A test half too small for the headline's Holm-adjusted sign-flip test to
    reach p < 0.05 is only warned about (such a run can never say "beats")."""
    prompts = persona.prompts[: cfg.n_prompts]
    if len(prompts) < MIN_EVAL_ITEMS:
        raise ValueError(f"{persona.path or f'Persona {persona.name!r}'}: eval.prompts: {len(prompts)} used "
                         f"(steer.n_prompts={cfg.n_prompts}), at least {MIN_EVAL_ITEMS} needed ({SPLIT_WHY})")
    test = len(prompts) // 2
    # an exact sign-flip test over n prompts gives p >= 2^-n; Holm multiplies the smallest by the controls
    needed = next(n for n in range(1, 64) if len(CONTROLS) / 2 ** n < 0.05)
    if test < needed:
        logger.warning("%s: the test half has %d eval prompts: the sign-flip test's p >= 2^-%d, so after Holm over "
                       "%d controls no comparison can reach p < 0.05 (that needs %d prompts a half, %d in all)",
                       persona.name, test, test, len(CONTROLS), needed, 2 * needed)


def system_prompt(persona: Persona) -> str:
    """The prompting baseline's system turn."""
    return f"Play this role in your reply: {persona.description}"


def sample_replies(model: HookedModel, sae, ivs: dict[str, Intervention], prompts: list[str], rows: list[Row],
                   cfg: SteerConfig, seed: int, system: str) -> tuple[list[str], list[list[int]]]:
    """Generate one reply per row, every method side by side in the same batches; returns texts and token ids."""
    def prompt_ids(r: Row) -> list[int]:
        msgs = [{"role": "user", "content": prompts[r.prompt]}]
        if r.method == "system_prompt":
            msgs = [{"role": "system", "content": system}] + msgs
        return encode_prompt(model.tokenizer, msgs)

    replies: list[list[int]] = []
    all_ids = [prompt_ids(r) for r in rows]
    batch = rows_that_fit(model, max(map(len, all_ids)) + cfg.max_new_tokens, GENERATION_BATCH)
    for b in tqdm(range(0, len(rows), batch), desc="steered generation"):
        chunk = rows[b:b + batch]
        ids = all_ids[b:b + batch]
        width = max(len(x) for x in ids)
        with _steer_ctx(model, sae, ivs, chunk, cfg, width):
            out, _ = generate(model, ids, cfg.max_new_tokens, cfg.temperature, seed + b, top_p=cfg.top_p)
        replies += out
    texts = [model.tokenizer.decode(r, skip_special_tokens=True).strip() for r in replies]
    return texts, replies


def run_sweep(model: HookedModel, sae, persona: Persona, found: FinderResult, cfg: SteerConfig, seed: int,
              feature: int, judge_cfg: JudgeConfig | None = None, ref_model: HookedModel | None = None,
              directions: dict[str, torch.Tensor] | None = None, judge=None,
              ab_items: list | None = None) -> dict:
    """Generate, score and summarise the whole sweep; returns rows for steering.csv, samples and headline.
    `directions`: the peer vectors that were built (name -> direction at the SAE's hook); `judge`: a
    (score, validity) pair already fitted for this persona (else `judge_for_run` fits one); `ab_items`: held-out
    A/B items for CAA's p(matching) (psm_repro/peers/ab_metric.py)."""
    random_feature = matched_random_latent(found, sae, feature, seed, exclude={r["feature"] for r in found.rows[:20]})
    ivs = build_interventions(sae, found, cfg, feature, random_feature, directions)
    steered = [m for m in STEERED if m in ivs]
    judge_cfg = judge_cfg or JudgeConfig()
    coefs = [c for c in cfg.coefficients if c != 0]
    prompts = persona.prompts[: cfg.n_prompts]
    rows = [Row("unsteered", 0.0, p, s) for p in range(len(prompts)) for s in range(cfg.samples_per_prompt)]
    rows += [Row("system_prompt", 0.0, p, s) for p in range(len(prompts)) for s in range(cfg.samples_per_prompt)]
    rows += [Row(m, c, p, s) for m in steered for c in coefs for p in range(len(prompts))
             for s in range(cfg.samples_per_prompt)]

    clock = time.perf_counter()
    texts, replies = sample_replies(model, sae, ivs, prompts, rows, cfg, seed, system_prompt(persona))
    clock = _lap("generation", len(rows), clock)

    score, validity = judge or judge_for_run(persona, judge_cfg.sets_dir, seed, judge_cfg.folds, backend=cfg.judge,
                                             llm_judge=judge_from_config(cfg) if cfg.judge == "llm" else None,
                                             ref_model=ref_model, model=model.name)
    scored = score([prompts[r.prompt] for r in rows], texts)
    clock = _lap("judge", len(rows), clock)
    # the judge's reference LM is the embedded model: when it is also the model under test it has already
    # computed every reply's log-prob, and perplexity is the same number (read back from its cache)
    reference = ReferenceLM(model) if ref_model is model else None
    ppl = perplexities(model, [prompts[r.prompt] for r in rows], texts, reference=reference)
    distinct = np.array([distinct_n(r) for r in replies])
    clock = _lap("perplexity", len(rows), clock)

    # teacher-forced contrast log-prob on eval pairs, steered the same way
    pairs = persona.pairs[: cfg.n_pairs]
    lp_rows = [Row(m, c, i, k) for m in ("unsteered",) for c in (0.0,) for i in range(len(pairs)) for k in (0, 1)]
    # the latent and its two controls; the peer vectors are measured by the headline and the A/B metric
    lp_rows += [Row(m, c, i, k) for m in steered if m in CONTRAST_METHODS for c in coefs for i in range(len(pairs))
                for k in (0, 1)]
    lp = np.full(len(lp_rows), np.nan)
    if pairs:  # an imported trait file has no written reply pairs
        tf, starts = teacher_forced_rows(model, [pairs[r.prompt].prompt for r in lp_rows],
                                         [pairs[r.prompt].trait if r.sample == 0 else pairs[r.prompt].neutral
                                          for r in lp_rows])
        lp = reply_logprobs(model, tf, starts, batch_size=32,
                            steer_ctx=lambda sl, width: _steer_ctx(model, sae, ivs, lp_rows[sl], cfg, width))
    clock = _lap("contrast log-prob", len(lp_rows), clock)
    lp_rows_arr = np.array([(r.method, r.coefficient, r.prompt, r.sample) for r in lp_rows], dtype=object)

    split_of = {p: ("dev" if p % 2 == 0 else "test") for p in range(len(prompts))}
    cols = {"method": np.array([r.method for r in rows]), "coef": np.array([r.coefficient for r in rows]),
            "prompt": np.array([r.prompt for r in rows])}
    cols["split"] = np.array([split_of[p] for p in cols["prompt"]])
    measures = {"score": scored.score, "trait": scored.trait, "coherence": scored.coherence}
    base_ppl = np.nanmean(ppl[cols["method"] == "unsteered"])
    resid = found.resid_norm
    table = []
    for split in ("dev", "test"):
        cells = [("unsteered", 0.0), ("system_prompt", 0.0)] + [(m, c) for m in steered for c in coefs]
        for method, c in cells:
            m = (cols["method"] == method) & (cols["coef"] == c) & (cols["split"] == split)
            if not m.any():
                continue
            row = {"method": method, "feature": {"sae_latent": feature, "random_latent": random_feature}.get(method, ""),
                   "coefficient": c, "split": split}
            for name, values in measures.items():
                mean, lo, hi = stats.bca_interval(stats.group_means(values[m], cols["prompt"][m]), cfg.n_bootstrap, seed)
                row |= {f"{name}_score" if name != "score" else "score": mean, f"{name}_ci_low": lo,
                        f"{name}_ci_high": hi}
            d = _per_prompt_diff(measures["score"], cols, (method, c), ("unsteered", 0.0), split)
            row["delta_vs_unsteered"], row["delta_ci_low"], row["delta_ci_high"] = stats.bca_interval(
                d, cfg.n_bootstrap, seed)
            cl = _contrast(lp, lp_rows_arr, method if method != "system_prompt" else None, c, cfg, seed, split)
            ppl_m, dist_m = float(np.nanmean(ppl[m])), float(np.nanmean(distinct[m]))
            iv = ivs.get(method)
            # add: the injected vector; clamp: the latent's decoder contribution at its target value
            norm = float(steering_vector(sae, iv).norm()) * abs(c) if iv is not None and iv.mode != "ablate" else 0.0
            row |= {"contrast_logprob": cl[0], "contrast_ci_low": cl[1], "contrast_ci_high": cl[2],
                    "perplexity": ppl_m, "distinct2": dist_m, "collapsed": coherence_collapsed(ppl_m / base_ppl, dist_m),
                    "vector_norm_ratio": norm / resid, "judge_auroc": validity.auroc_headline, "judge": cfg.judge,
                    "judge_valid": validity.valid, "n": int(np.isfinite(scored.score[m]).sum())}
            table.append(row)
    headline = _headline(table, measures, cols, cfg, seed, validity.valid)
    ab = None
    if ab_items:
        ab = ab_table(model, sae, ab_items, ivs, steered, coefs, system_prompt(persona), cfg.n_bootstrap,
                      seed)
        clock = _lap("A/B metric", len(ab_items), clock)
    methods = compare_methods(table, measures, cols, steered, cfg, seed, ab)
    samples = [{"method": r.method, "coefficient": r.coefficient, "prompt": prompts[r.prompt], "sample": r.sample,
                "split": split_of[r.prompt], "reply": t, "trait_score": float(a), "coherence_score": float(b),
                "score": float(a * b), "perplexity": float(p)}
               for r, t, a, b, p in zip(rows, texts, scored.trait, scored.coherence, ppl)]
    return {"table": table, "samples": samples, "headline": headline, "methods": methods, "ab": ab or [],
            "feature": feature,
            "random_feature": random_feature, "judge": cfg.judge, "judge_validity": validity.as_row(),
            "judge_auroc": validity.auroc_headline, "judge_reliable": validity.valid,
            "n_prompts_per_half": {"dev": len(prompts[0::2]), "test": len(prompts[1::2])},
            "sampling": {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens},
            "steering_vector_norm_ratio": float(steering_vector(sae, ivs["sae_latent"]).norm()) / resid}


def _per_prompt_diff(values: np.ndarray, cols: dict, a: tuple[str, float], b: tuple[str, float],
                     split: str) -> np.ndarray:
    """Per-prompt mean of `values` under condition a minus under condition b, over prompts that have both."""
    def means(method, c):
        m = (cols["method"] == method) & (cols["coef"] == c) & (cols["split"] == split)
        return {p: float(np.nanmean(values[m & (cols["prompt"] == p)])) for p in np.unique(cols["prompt"][m])}

    x, y = means(*a), means(*b)
    return np.array([x[p] - y[p] for p in sorted(set(x) & set(y))])


def _contrast(lp, lp_rows, method, c, cfg, seed, split):
    if method is None or lp_rows.ndim < 2:  # no pairs (an imported trait file)
        return float("nan"), float("nan"), float("nan")
    m = (lp_rows[:, 0] == method) & (lp_rows[:, 1] == c)
    idx = np.where(m)[0]
    by_pair = {}
    for i in idx:
        p, k = lp_rows[i, 2], lp_rows[i, 3]
        if (p % 2 == 0) == (split == "dev"):
            by_pair.setdefault(p, [0.0, 0.0])[k] = lp[i]
    diffs = np.array([v[0] - v[1] for v in by_pair.values()])
    return stats.bca_interval(diffs, cfg.n_bootstrap, seed)


CONTROLS = ("unsteered", "random_latent", "dense_direction", "system_prompt")


def _headline(table, measures: dict, cols: dict, cfg: SteerConfig, seed: int, judge_valid: bool) -> dict:
    """Pick the coefficient on the dev half by the headline score; on the test half compare the latent with
    each control: per-prompt differences, an exact sign-flip test (one-sided, latent better), Holm across the
    four comparisons, and a BCa interval. "beats" needs Holm p < 0.05 and a judge that passed validation."""
    dev = [r for r in table if r["split"] == "dev" and r["method"] == "sae_latent"]
    best = max(dev, key=lambda r: r["score"])["coefficient"]
    out = {"coefficient": best, "selected_on": "dev half, headline score (trait x coherence)"}
    raw = {}
    for control in CONTROLS:
        c = 0.0 if control in ("unsteered", "system_prompt") else best
        d = {name: _per_prompt_diff(v, cols, ("sae_latent", best), (control, c), "test") for name, v in measures.items()}
        mean, lo, hi = stats.bca_interval(d["score"], cfg.n_bootstrap, seed)
        # exact (all 2^n sign patterns) up to 20 prompts a half; Monte Carlo beyond
        raw[control] = stats.sign_flip_p(d["score"], alternative="greater", n_resamples=2 ** min(len(d["score"]), 20),
                                         seed=seed)
        out[f"vs_{control}"] = {"diff": mean, "ci_low": lo, "ci_high": hi, "p": raw[control],
                                "n_prompts": len(d["score"]),
                                "trait_diff": float(np.nanmean(d["trait"])) if len(d["trait"]) else float("nan"),
                                "coherence_diff": float(np.nanmean(d["coherence"])) if len(d["coherence"])
                                else float("nan")}
    adjusted = stats.holm(np.array([raw[c] for c in CONTROLS]))
    for control, p_holm in zip(CONTROLS, adjusted):
        h = out[f"vs_{control}"]
        h["p_holm"] = float(p_holm)
        h["beats"] = bool(judge_valid and p_holm < 0.05)
        h["verdict"] = "judge not valid" if not judge_valid else ("beats" if h["beats"] else "no")
    # steerability: each prompt's least-squares slope of the headline score on the coefficient (0 = unsteered)
    slopes = []
    for p in np.unique(cols["prompt"]):
        m = (cols["prompt"] == p) & ((cols["method"] == "sae_latent") | (cols["method"] == "unsteered"))
        if len(np.unique(cols["coef"][m])) > 1:
            slopes.append(np.polyfit(cols["coef"][m], measures["score"][m], 1)[0])
    mean, lo, hi = stats.bca_interval(np.array(slopes), cfg.n_bootstrap, seed)
    out["steerability"] = {"slope": mean, "ci_low": lo, "ci_high": hi}
    return out
