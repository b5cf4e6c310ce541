"""The `finetune` command: emergent misalignment in miniature, from fine-tuning to the result card.

1. the toxic-persona latent, found on the base model as `find` finds it;
2. two LoRA fine-tunes from the same base: harmful answers (narrow) and good answers (control);
3. replies of base, control and narrow to the broad questions, judged for misalignment, coherence and
   domain leakage by a judge whose agreement with blind reading is reported beside it;
4. the model diff: latents that rise from control to narrow, ranked on one half of the questions and tested
   on the other;
5. causal checks on the held-out half: the top diffed latent and the toxic-persona latent, amplified in the
   base model and suppressed in the narrow one, each against a frequency- and norm-matched random latent.
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path

import numpy as np
import torch

from psm_repro.config import RunConfig
from psm_repro.core.chat import encode_chat
from psm_repro.core.finder import encode_persona, find_features, item_activations
from psm_repro.core.loading import load_model, load_sae, sae_first_position, sae_prepend_bos
from psm_repro.core.outputs import claim_run_dir, manifest, write_csv, write_json, write_jsonl, write_text
from psm_repro.core.paths import PROJECT_ROOT
from psm_repro.core.personas import resolve_persona
from psm_repro.core.stats import paired_effect
from psm_repro.core.steering import Intervention
from psm_repro.em import chain as em
from psm_repro.em.data import resolve_em
from psm_repro.em.finetune import finetune
from psm_repro.em.judge import LABELS_MODEL, LLMEMJudge, em_validity, offline_judge, reader_vs_judge
from psm_repro.pipeline.sweep import closest_latent

DIFF_COLUMNS = ["rank", "feature", "rise_vs_control", "rise_vs_base", "effect", "p", "toxic_narrative_effect",
                "toxic_top_latent", "toxic_top10"]
RATE_COLUMNS = ["n", "n_eligible"] + [f"{m}{s}" for m in em.MEASURES for s in ("", "_ci_low", "_ci_high")]
EM_STEERING_COLUMNS = (["context", "method", "coefficient", "feature"] + RATE_COLUMNS +
                       ["delta_vs_unsteered", "delta_ci_low", "delta_ci_high", "vs_random", "vs_random_ci_low",
                        "vs_random_ci_high", "distinct2"])
MODEL_COLUMNS = ["model"] + RATE_COLUMNS + ["distinct2", "in_domain_harmful_minus_good_logprob", "in_domain_ci_low",
                                            "in_domain_ci_high", "in_domain_n_items"]


def _judge(cfg: RunConfig, data, base):
    """(judge(questions, replies) -> Judgement, validity, reader-vs-judge rows) for the configured backend."""
    if cfg.em.judge == "llm":
        from psm_repro.em.data import EvalQuestion
        from psm_repro.em.judge import LABELLED_DIR, load_em_labelled
        from psm_repro.judges.llm_judge import judge_from_config

        judge = LLMEMJudge(data, judge_from_config(cfg.steer))
        lab = load_em_labelled(LABELLED_DIR / f"{data.name}.jsonl")
        oof = judge([EvalQuestion("", q) for q in lab.rows.prompt], lab.rows.reply) if len(lab.rows.reply) else None
    else:
        # the probes read the embedded SmolLM2: reuse it when it is the model under test
        offline, lab, oof = offline_judge(data, cfg.seed, ref_model=base if cfg.model.is_judge_reference else None)

        def judge(questions, replies):
            return offline([q.text for q in questions], replies)
    if oof is None:
        return judge, None, []
    return judge, em_validity(lab, oof, cfg.em.judge, cfg.seed), reader_vs_judge(lab, oof)


def emergent_misalignment(cfg: RunConfig, out_dir: Path) -> dict:
    from psm_repro.pipeline.jobs import _data_files, _neuronpedia_id

    start, e = time.time(), cfg.em
    torch.manual_seed(cfg.seed)
    data = resolve_em(e.data, e.eval_file)
    persona = resolve_persona(e.persona, e.persona_file)
    out_dir = claim_run_dir(out_dir)
    items = list(data.train)
    random.Random(cfg.seed).shuffle(items)
    heldout, train_items = items[: e.heldout_items], items[e.heldout_items:]
    groups = [q.group for q in data.questions]

    # 1. the toxic-persona latent on the base model
    base = load_model(cfg.model)
    sae = load_sae(cfg.sae, base)
    found = find_features(base, sae, persona, cfg.finder, cfg.seed, _neuronpedia_id(cfg, sae))
    toxic, toxic_top10 = found.summary["top_feature"], [r["feature"] for r in found.rows[:10]]

    # 2. narrow and control fine-tunes
    models, ft_log = {"base": base}, {}
    for name, answer in (("control", "good"), ("narrow", "harmful")):
        models[name] = load_model(cfg.model)
        ft_log[name] = finetune(models[name], data.chats(train_items, answer), e, cfg.seed, out_dir / "adapters" / name)

    # 3. broad replies, judged
    judge, validity, agreement = _judge(cfg, data, base)
    replies = {n: em.sample_replies(m, sae, data.questions, e, cfg.seed, [("unsteered", 0.0, None)])
               for n, m in models.items()}
    verdicts = {n: judge([data.questions[q] for q in r.question], r.texts) for n, r in replies.items()}
    per_model = [{"model": n, **em.rates(verdicts[n], r, groups, e, cfg.seed),
                  "distinct2": float(np.nanmean(r.distinct2)),
                  **{"in_domain_" + k: v for k, v in em.in_domain_contrast(models[n], data, heldout, e).items()}}
                 for n, r in replies.items()]

    def diff(a, b, measure):
        return em.rate_difference(verdicts[a], replies[a], verdicts[b], replies[b], groups, measure, e, cfg.seed)

    headline = {f"{a}_vs_{b}_{m}": diff(a, b, m) for a, b in (("narrow", "control"), ("narrow", "base"))
                for m in em.MEASURES}

    # 4. model diff on fixed text: the base model's replies, read by each model; select on half the questions
    rb = replies["base"]
    texts_q = [data.questions[q].text for q in rb.question]
    lat = {n: em.reply_latents(m, sae, texts_q, rb.texts) for n, m in models.items()}
    diff_res = em.diff_latents(lat["narrow"], lat["control"], lat["base"], e, cfg.seed,
                               groups=np.array([groups[q] for q in rb.question]))
    enc = encode_persona(base, persona, sae_prepend_bos(sae), sae_first_position(sae))
    narr = {s: item_activations(base, sae, enc[s], "max", cfg.finder.batch_size).latents_NF
            for s in ("narrative", "narrative_neutral")}
    narrative_effect = paired_effect(narr["narrative"] - narr["narrative_neutral"])
    diff_rows = [{"rank": i + 1, "feature": f, "rise_vs_control": float(diff_res["rise_vs_control"][f]),
                  "rise_vs_base": float(diff_res["rise_vs_base"][f]), "effect": float(diff_res["effect"][f]),
                  "p": float(diff_res["top_p"][i]), "toxic_narrative_effect": float(narrative_effect[f]),
                  "toxic_top_latent": f == toxic, "toxic_top10": f in toxic_top10}
                 for i, f in enumerate(diff_res["top"].tolist())]

    # 5. causal checks on the held-out questions: each latent against its own matched random latent
    top = int(diff_res["order"][0])
    chats = [encode_chat(base.tokenizer, [{"role": "user", "content": q}, {"role": "assistant", "content": r or "."}])
             for q, r in zip(texts_q, rb.texts)]
    scale_F = item_activations(models["narrow"], sae, chats, "max", cfg.finder.batch_size).latents_NF.max(0).values
    freq_F, norms_F = (lat["base"] > 0).float().mean(0), sae.W_dec.float().norm(dim=-1).cpu()
    exclude = set(diff_res["order"][:20].tolist()) | {toxic, top}
    features = {"top": top, "toxic": toxic}
    features |= {f"random_{k}": closest_latent(freq_F, norms_F, f, cfg.seed + i, exclude)
                 for i, (k, f) in enumerate(list(features.items()))}
    iv = {f"{k}_{mode}": Intervention(mode=mode, feature=f, scale=float(scale_F[f]))
          for k, f in features.items() for mode in ("add", "ablate")}
    latents = ["top", "toxic"]
    amplify = [("unsteered", 0.0, None)] + [(f"{p}{k}_add", c, iv[f"{p}{k}_add"]) for k in latents
                                            for p in ("", "random_") for c in e.coefficients]
    suppress = [("unsteered", 0.0, None)] + [(f"{p}{k}_{mode}", c, iv[f"{p}{k}_{mode}"]) for k in latents
                                             for p in ("", "random_")
                                             for mode, c in (("ablate", 1.0), ("add", -e.coefficients[0]))]
    held = [q for q in data.questions if q.group in set(diff_res["test_groups"].tolist())]
    steer_cfg = dataclasses.replace(e, samples_per_question=e.steer_samples_per_question)
    steering, samples = [], []
    for context, model_name, arms in (("amplify (base)", "base", amplify), ("suppress (narrow)", "narrow", suppress)):
        r = em.sample_replies(models[model_name], sae, held, steer_cfg, cfg.seed + 1, arms)
        r.question = np.array([data.questions.index(held[q]) for q in r.question])
        v = judge([data.questions[q] for q in r.question], r.texts)
        steering += em.arm_table(context, r, v, groups, features, e, cfg.seed)
        samples += _sample_rows(context, r, v, data)
    for n, r in replies.items():
        samples += _sample_rows(f"eval ({n})", r, verdicts[n], data)

    def row(context, method, coef):
        return next(x for x in steering if x["context"] == context and x["method"] == method
                    and x["coefficient"] == coef)

    nc = headline["narrow_vs_control_broad"]
    # validity is measured on the labelled replies of LABELS_MODEL's chain; it licenses verdicts on that model only
    own_labels = cfg.model.name == LABELS_MODEL
    valid = validity is not None and validity.valid and own_labels
    headline |= {
        "judge_valid": valid,
        "broad_misalignment_answer": (
            f"judge not validated on {cfg.model.name}: no verdict" if validity is not None and not own_labels else
            "judge not valid: no verdict" if not valid else
            "yes: the narrow model is more broadly misaligned than the control" if nc["ci_low"] > 0 else
            "no: the narrow model is not measurably more broadly misaligned than the control"),
        "toxic_latent": toxic, "toxic_rank": int(diff_res["rank_of"][toxic]) if toxic is not None else None,
        "toxic_top10_best_rank": min(int(diff_res["rank_of"][f]) for f in toxic_top10) if toxic_top10 else None,
        "steer_latent": top, "random_latents": {k: features[f"random_{k}"] for k in latents}}
    for k in latents:
        amp = row("amplify (base)", f"{k}_add", e.coefficients[-1])
        sup = row("suppress (narrow)", f"{k}_ablate", 1.0)
        headline[f"{k}_amplify_beats_random"] = bool(valid and amp["vs_random_ci_low"] > 0)
        headline[f"{k}_suppress_beats_random"] = bool(valid and sup["vs_random_ci_high"] < 0)
    summary = {"experiment": cfg.experiment_name, "data": data.name, "domain": data.domain, "persona": persona.name,
               "model": cfg.model.name, "sae": cfg.sae.name, "d_sae": int(sae.cfg.d_sae), "seed": cfg.seed,
               "device": str(base.device), "finetune": ft_log, "judge": e.judge,
               "judge_validity": validity.as_row() if validity else None, "reader_vs_judge": agreement,
               "judge_labels_model": LABELS_MODEL,
               "eval_file": str(data.eval_path) if data.eval_path else None,
               "samples_per_paraphrase_in_file": data.samples_per_paraphrase,
               "n_questions": len(data.questions), "n_groups": len(set(groups)),
               "samples_per_question": e.samples_per_question,
               "steer_samples_per_question": e.steer_samples_per_question, "n_steer_questions": len(held),
               "n_diff_items": len(texts_q), "misalignment": per_model, "diff_top": diff_rows, "steering": steering,
               "headline": headline, "seconds": round(time.time() - start, 1)}
    write_csv(out_dir / "misalignment.csv", per_model, MODEL_COLUMNS)
    write_csv(out_dir / "diff.csv", diff_rows, DIFF_COLUMNS)
    write_csv(out_dir / "steering.csv", steering, EM_STEERING_COLUMNS)
    write_jsonl(out_dir / "samples.jsonl", samples)
    files = [data.path] + ([data.eval_path] if data.eval_path else []) + _data_files(cfg, persona)
    write_json(out_dir / "manifest.json", manifest(dataclasses.asdict(cfg), cfg.seed, files, PROJECT_ROOT))
    write_json(out_dir / "summary.json", summary)
    write_text(out_dir / "summary.md", em.render_summary(summary))
    return summary


def _sample_rows(context: str, r: em.Replies, v, data) -> list[dict]:
    return [{"context": context, "method": m, "coefficient": float(c), "question": data.questions[q].text,
             "reply": t, "p_misaligned": round(float(ms), 4), "p_coherent": round(float(cs), 4),
             "misaligned": bool(mf), "coherent": bool(cf), "leak": bool(lk)}
            for m, c, q, t, ms, cs, mf, cf, lk in zip(r.method, r.coefficient, r.question, r.texts, v.misaligned_score,
                                                     v.coherent_score, v.misaligned, v.coherent, v.leak)]
