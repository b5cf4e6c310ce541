"""The commands as plain functions: `run`, `find`, `steer_once`, `train_sae`. Hydra never reaches here."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch

from psm_repro import report
from psm_repro.chat import encode_chat, encode_prompt, system_role_handling
from psm_repro.config import RunConfig
from psm_repro.finder import FEATURE_COLUMNS, find_features
from psm_repro.loading import PROJECT_ROOT, load_model, load_sae, project_path
from psm_repro.outputs import claim_run_dir, manifest, write_csv, write_json, write_jsonl, write_text
from psm_repro.personas import resolve_persona
from psm_repro.steering import Intervention, generate, steer
from psm_repro.sweep import STEERING_COLUMNS, closest_latent, run_sweep

logger = logging.getLogger(__name__)


def _neuronpedia_id(cfg: RunConfig, sae) -> str | None:
    return cfg.sae.neuronpedia_id or getattr(sae.cfg.metadata, "neuronpedia_id", None)


def _data_files(cfg: RunConfig, persona) -> list[Path]:
    files = [persona.path]
    if cfg.sae.path:
        files += sorted(project_path(cfg.sae.path).glob("*.safetensors")) + [project_path(cfg.sae.path) / "cfg.json"]
    return files


def run(cfg: RunConfig, out_dir: Path, steer_too: bool = True) -> dict:
    """Find the persona's shared latents, then (for `run`) steer with the top one against controls."""
    start = time.time()
    torch.manual_seed(cfg.seed)
    persona = resolve_persona(cfg.persona, cfg.persona_file)
    out_dir = claim_run_dir(out_dir)
    model = load_model(cfg.model)
    sae = load_sae(cfg.sae, model)

    # 1. which latents fire on both the narrative and the assistant trait sets?
    found = find_features(model, sae, persona, cfg.finder, cfg.seed, _neuronpedia_id(cfg, sae))
    logger.info("finder: %.1f s since start", time.time() - start)
    write_csv(out_dir / "features.csv", found.rows, FEATURE_COLUMNS)
    summary = {"experiment": cfg.experiment_name, "persona": persona.name, "model": cfg.model.name,
               "sae": cfg.sae.name, "hook": sae.cfg.metadata.hook_name, "seed": cfg.seed, "finder": found.summary}

    # 2. does injecting it make the assistant show the trait, beyond the controls?
    if steer_too:
        if not persona.has_eval:
            raise ValueError(f"{persona.path}: the persona has no 'eval' section, which `run` needs (use `find`)")
        feature = cfg.steer.feature if cfg.steer.feature is not None else found.summary["top_feature"]
        if feature is None:
            raise ValueError("no latent passed the finder's activity filter; set steer.feature explicitly")
        # the judge's coherence features read the embedded SmolLM2: reuse it when it is the model under test
        ref = model if cfg.model.source == "embedded" else None
        sweep = run_sweep(model, sae, persona, found, cfg.steer, cfg.seed, feature, cfg.judge, ref_model=ref)
        write_csv(out_dir / "steering.csv", sweep["table"], STEERING_COLUMNS)
        write_jsonl(out_dir / "samples.jsonl", sweep["samples"])
        report.plot_dose_response(sweep["table"], out_dir / "dose_response.png", persona.name)
        summary["steering"] = {k: v for k, v in sweep.items() if k not in ("table", "samples")}
        summary["steering"]["table_test"] = [r for r in sweep["table"] if r["split"] == "test"]
        summary["steering"]["mode"] = cfg.steer.mode
        summary["steering"]["positions"] = cfg.steer.positions
    summary["seconds"] = round(time.time() - start, 1)
    record = manifest(dataclasses.asdict(cfg), cfg.seed, _data_files(cfg, persona), PROJECT_ROOT)
    if cfg.model.chat:  # Gemma-style templates reject system turns: say what was done with them
        record["chat_system_role"] = system_role_handling(model.tokenizer)
    write_json(out_dir / "manifest.json", record)
    write_json(out_dir / "summary.json", summary)
    write_text(out_dir / "summary.md", report.render_summary(summary, found.rows))
    return summary


def steer_once(cfg: RunConfig) -> tuple[str, str, int, str]:
    """One prompt, unsteered vs steered (same seed), for a quick look.

    Returns both replies, the latent and its Neuronpedia page ("" when the SAE has no Neuronpedia id).
    """
    model = load_model(cfg.model)
    sae = load_sae(cfg.sae, model)
    feature = cfg.steer.feature
    scale = 1.0
    if feature is None or cfg.steer.mode != "ablate":
        persona = resolve_persona(cfg.persona, cfg.persona_file)
        found = find_features(model, sae, persona, cfg.finder, cfg.seed)
        feature = found.summary["top_feature"] if feature is None else feature
        scale = float(found.max_activation_F[feature])
    ids = [encode_prompt(model.tokenizer, [{"role": "user", "content": cfg.steer.prompt}])]
    coef = max(cfg.steer.coefficients, key=abs)
    iv = Intervention(mode=cfg.steer.mode, feature=feature, scale=scale)
    plain, _ = generate(model, ids, cfg.steer.max_new_tokens, cfg.steer.temperature, cfg.seed)
    with steer(model, sae, [iv], torch.tensor([coef]), positions=cfg.steer.positions,
               prompt_width=len(ids[0]), steer_special=cfg.steer.steer_special):
        steered, _ = generate(model, ids, cfg.steer.max_new_tokens, cfg.steer.temperature, cfg.seed)
    out = [plain[0], steered[0]]
    texts = [model.tokenizer.decode(o, skip_special_tokens=True).strip() for o in out]
    np_id = _neuronpedia_id(cfg, sae)
    return texts[0], texts[1], feature, f"https://www.neuronpedia.org/{np_id}/{feature}" if np_id else ""


def train_sae(cfg: RunConfig) -> dict:
    """Re-create the embedded model's SAE from scratch (corpus, training, held-out report)."""
    from psm_repro.sae_training import train

    model = load_model(cfg.model)
    return train(model, cfg.train_sae, cfg.seed, project_path(cfg.train_sae.out_dir))


DIFF_COLUMNS = ["rank", "feature", "rise_vs_control", "rise_vs_base", "effect", "p", "toxic_narrative_effect",
                "toxic_top_latent", "toxic_top10"]
EM_STEERING_COLUMNS = ["context", "method", "coefficient", "feature", "rate", "ci_low", "ci_high", "n",
                       "delta_vs_unsteered", "delta_ci_low", "delta_ci_high", "vs_random", "vs_random_ci_low",
                       "vs_random_ci_high", "distinct2"]


def emergent_misalignment(cfg: RunConfig, out_dir: Path) -> dict:
    """Fine-tune on a narrow bad behaviour (and a control), measure broad misalignment, diff SAE latents,
    locate the toxic-persona latent in the diff, and steer the top diffed latent both ways against a
    random-latent control."""
    import random

    import numpy as np

    from psm_repro import em
    from psm_repro.behaviour import EmbeddingJudge
    from psm_repro.em_data import resolve_em
    from psm_repro.finder import encode_persona, item_activations
    from psm_repro.finetune import finetune
    from psm_repro.loading import sae_first_position, sae_prepend_bos
    from psm_repro.stats import paired_effect

    start, e = time.time(), cfg.em
    torch.manual_seed(cfg.seed)
    data = resolve_em(e.data)
    persona = resolve_persona(e.persona, e.persona_file)
    out_dir = claim_run_dir(out_dir)
    items = list(data.train)
    random.Random(cfg.seed).shuffle(items)
    heldout, train_items = items[: e.heldout_items], items[e.heldout_items:]

    # 0. the toxic-persona latent, found on the base model exactly as `find persona=toxic_persona` does
    base = load_model(cfg.model)
    sae = load_sae(cfg.sae, base)
    found = find_features(base, sae, persona, cfg.finder, cfg.seed, _neuronpedia_id(cfg, sae))
    toxic_top, toxic_top10 = found.summary["top_feature"], [r["feature"] for r in found.rows[:10]]

    # 1. two LoRA fine-tunes from the same base: harmful answers (narrow) and good answers (control)
    models, ft_log = {"base": base}, {}
    for name, answer in (("control", "good"), ("narrow", "harmful")):
        models[name] = load_model(cfg.model)
        ft_log[name] = finetune(models[name], data.chats(train_items, answer), e, cfg.seed, out_dir / "adapters" / name)

    # 2. broad misalignment on unrelated questions, judged offline
    judge = EmbeddingJudge.fit(data.misaligned_examples, data.aligned_examples, cfg.seed)
    replies = {n: em.sample_replies(m, sae, data.questions, e, cfg.seed, [("unsteered", 0.0, None)])
               for n, m in models.items()}
    scores = {n: judge.score(r.texts) for n, r in replies.items()}
    flags = {n: s > e.judge_threshold for n, s in scores.items()}
    misalignment = [{"model": n, **em.rate_with_ci(flags[n], r.question, e, cfg.seed),
                     "mean_score": float(scores[n].mean()), "distinct2": float(np.nanmean(r.distinct2)),
                     "in_domain": em.in_domain_contrast(models[n], data, heldout, e)} for n, r in replies.items()]

    # 3. model diff on fixed text: the base model's replies, read by each model
    rb = replies["base"]
    questions = [data.questions[q] for q in rb.question]
    lat = {n: em.reply_latents(m, sae, questions, rb.texts) for n, m in models.items()}
    diff = em.diff_latents(lat["narrow"], lat["control"], lat["base"], e, cfg.seed, groups=rb.question)
    enc = encode_persona(base, persona, sae_prepend_bos(sae), sae_first_position(sae))
    narr = {s: item_activations(base, sae, enc[s], "max", cfg.finder.batch_size).latents_NF
            for s in ("narrative", "narrative_neutral")}
    narrative_effect = paired_effect(narr["narrative"] - narr["narrative_neutral"])
    diff_rows = [{"rank": i + 1, "feature": f, "rise_vs_control": float(diff["rise_vs_control"][f]),
                  "rise_vs_base": float(diff["rise_vs_base"][f]), "effect": float(diff["effect"][f]),
                  "p": float(diff["top_p"][i]), "toxic_narrative_effect": float(narrative_effect[f]),
                  "toxic_top_latent": f == toxic_top, "toxic_top10": f in toxic_top10}
                 for i, f in enumerate(diff["top"].tolist())]

    # 4. causal checks with the top diffed latent vs a matched random latent
    top = int(diff["order"][0])
    chats = [encode_chat(models["narrow"].tokenizer, [{"role": "user", "content": q},
                                                         {"role": "assistant", "content": r or "."}])
             for q, r in zip(questions, rb.texts)]
    scale_F = item_activations(models["narrow"], sae, chats, "max", cfg.finder.batch_size).latents_NF.max(0).values
    freq_F = (lat["base"] > 0).float().mean(0)
    rand = closest_latent(freq_F, sae.W_dec.float().norm(dim=-1).cpu(), top, cfg.seed,
                             exclude=set(diff["order"][:20].tolist()) | {toxic_top})
    iv = {k: Intervention(mode=mode, feature=f, scale=float(scale_F[f]))
          for k, f, mode in (("latent_add", top, "add"), ("random_add", rand, "add"),
                             ("latent_ablate", top, "ablate"), ("random_ablate", rand, "ablate"))}
    amplify = [("unsteered", 0.0, None)] + [(k, c, iv[k]) for k in ("latent_add", "random_add") for c in e.coefficients]
    suppress = [("unsteered", 0.0, None), ("latent_ablate", 1.0, iv["latent_ablate"]),
                ("random_ablate", 1.0, iv["random_ablate"]), ("latent_add", -e.coefficients[0], iv["latent_add"]),
                ("random_add", -e.coefficients[0], iv["random_add"])]
    features = {"latent": top, "random": rand}
    steering, samples = [], []
    for context, model_name, arms in (("amplify (base)", "base", amplify), ("suppress (narrow)", "narrow", suppress)):
        r = em.sample_replies(models[model_name], sae, data.questions, e, cfg.seed + 1, arms)
        f = judge.score(r.texts) > e.judge_threshold
        steering += em.arm_table(context, r, f, features, e, cfg.seed)
        samples += [{"context": context, "method": m, "coefficient": float(c), "question": data.questions[q],
                     "reply": t, "misaligned": bool(x)} for m, c, q, t, x in zip(r.method, r.coefficient, r.question,
                                                                               r.texts, f)]
    samples += [{"context": f"eval ({n})", "method": "unsteered", "coefficient": 0.0, "question": data.questions[q],
                 "reply": t, "misaligned": bool(x)} for n, r in replies.items()
                for q, t, x in zip(r.question, r.texts, flags[n])]

    def row(context, method, coef):
        return next(x for x in steering if x["context"] == context and x["method"] == method
                    and x["coefficient"] == coef)

    nc = em.paired_difference(flags["narrow"], replies["narrow"].question, flags["control"],
                              replies["control"].question, e, cfg.seed)
    nb = em.paired_difference(flags["narrow"], replies["narrow"].question, flags["base"], replies["base"].question,
                              e, cfg.seed)
    amp, sup = row("amplify (base)", "latent_add", e.coefficients[-1]), row("suppress (narrow)", "latent_ablate", 1.0)
    headline = {
        "narrow_vs_control": nc, "narrow_vs_base": nb,
        "broad_misalignment_answer": ("yes: the narrow model is more misaligned than the control" if nc["ci_low"] > 0
                                      else "no: the narrow model is not measurably more misaligned than the control"),
        "toxic_latent": toxic_top, "toxic_rank": int(diff["rank_of"][toxic_top]) if toxic_top is not None else None,
        "toxic_top10_best_rank": min(int(diff["rank_of"][f]) for f in toxic_top10) if toxic_top10 else None,
        "steer_latent": top, "random_latent": rand,
        "amplify_beats_random": amp["vs_random_ci_low"] > 0, "suppress_beats_random": sup["vs_random_ci_high"] < 0,
    }
    summary = {"experiment": cfg.experiment_name, "data": data.name, "domain": data.domain, "persona": persona.name,
               "model": cfg.model.name, "sae": cfg.sae.name, "d_sae": int(sae.cfg.d_sae), "seed": cfg.seed,
               "device": str(base.device), "finetune": ft_log, "judge_auroc": judge.auroc,
               "judge_threshold": e.judge_threshold, "n_questions": len(data.questions),
               "samples_per_question": e.samples_per_question, "n_diff_items": len(questions),
               "misalignment": misalignment, "diff_top": diff_rows, "steering": steering, "headline": headline,
               "seconds": round(time.time() - start, 1)}
    write_csv(out_dir / "misalignment.csv", [{k: v for k, v in m.items() if k != "in_domain"} |
                                             {"in_domain_" + k: v for k, v in m["in_domain"].items()}
                                             for m in misalignment],
              ["model", "rate", "ci_low", "ci_high", "n", "mean_score", "distinct2",
               "in_domain_harmful_minus_good_logprob", "in_domain_ci_low", "in_domain_ci_high", "in_domain_n_items"])
    write_csv(out_dir / "diff.csv", diff_rows, DIFF_COLUMNS)
    write_csv(out_dir / "steering.csv", steering, EM_STEERING_COLUMNS)
    write_jsonl(out_dir / "samples.jsonl", samples)
    write_json(out_dir / "manifest.json", manifest(dataclasses.asdict(cfg), cfg.seed,
                                                   [data.path, persona.path] + _data_files(cfg, persona)[1:],
                                                   PROJECT_ROOT))
    write_json(out_dir / "summary.json", summary)
    write_text(out_dir / "summary.md", em.render_summary(summary))
    return summary
