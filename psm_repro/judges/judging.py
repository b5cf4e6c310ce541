"""The `judge` and `validate-judge` commands as plain functions (Hydra never reaches here)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from psm_repro.config import RunConfig
from psm_repro.core.outputs import RunDirError, claim_run_dir, read_jsonl, write_csv, write_jsonl, write_text
from psm_repro.core.paths import project_path
from psm_repro.core.personas import resolve_persona
from psm_repro.judges.judge import Encoder, ReferenceLM, load_labelled
from psm_repro.judges.llm_judge import judge_from_config
from psm_repro.judges.validation import (COLUMNS, Validity, fit_labels, judge_for_run, llm_scores, out_of_fold, pooled,
                                         render, shipped_personas, transfer, validity)

logger = logging.getLogger(__name__)


class JudgeInputError(ValueError):
    """A reply file the judge cannot read; the message names the file, line and field."""


def read_replies(path: str | None) -> list[dict]:
    """Objects with at least `prompt` and `reply` (strings), one per line, in file order."""
    if not path:
        raise JudgeInputError("judge.input: required (a JSONL file with `prompt` and `reply` on every line)")
    file = Path(path)
    if not file.is_file():
        raise JudgeInputError(f"judge.input: no such file: {path}")
    rows = []
    for n, obj in read_jsonl(file, JudgeInputError):
        if not isinstance(obj, dict):
            raise JudgeInputError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        for key in ("prompt", "reply"):
            if key not in obj:
                raise JudgeInputError(f"{path}:{n}: missing field '{key}'")
            if not isinstance(obj[key], str):
                raise JudgeInputError(f"{path}:{n}: field '{key}' must be a string")
        rows.append(obj)
    if not rows:
        raise JudgeInputError(f"{path}: no replies to judge (the file is empty)")
    return rows


def judge_file(cfg: RunConfig) -> Validity:
    """Score every reply of `judge.input` with the persona's judge and write `judge.output`."""
    rows = read_replies(cfg.judge.input)
    if not cfg.judge.output:
        raise JudgeInputError("judge.output: required (where the scored JSONL goes)")
    out = Path(cfg.judge.output)
    if out.exists():
        raise JudgeInputError(f"judge.output: {out} exists; earlier results are never overwritten, choose a new path")
    persona = resolve_persona(cfg.persona, cfg.persona_file)
    if persona.judge is None:
        raise JudgeInputError(f"{persona.path}: the persona has no 'eval.judge' section, which `judge` needs")
    score, valid = judge_for_run(persona, cfg.judge.sets_dir, cfg.seed, cfg.judge.folds, backend=cfg.steer.judge,
                                 llm_judge=judge_from_config(cfg.steer) if cfg.steer.judge == "llm" else None,
                                 model=cfg.model.name)
    s = score([r["prompt"] for r in rows], [r["reply"] for r in rows])
    write_jsonl(out, [r | {"trait_score": float(a), "coherence_score": float(b), "score": float(a * b)}
                      for r, a, b in zip(rows, s.trait, s.coherence)])
    return valid


def validate_judges(cfg: RunConfig, out_dir: Path) -> list[Validity]:
    """Every labelled persona's judge against the reading labels (out of fold), plus the pooled AUROC."""
    labelled = load_labelled(project_path(cfg.judge.sets_dir))
    if not labelled.reply:
        raise JudgeInputError(f"judge.sets_dir: no labelled replies under {cfg.judge.sets_dir}")
    personas = shipped_personas()
    wanted = cfg.judge.personas or sorted(set(labelled.persona))
    unknown = sorted(set(wanted) - {p.name for p in personas})
    if unknown:
        raise JudgeInputError(f"judge.personas: no shipped persona named {', '.join(unknown)}")
    try:
        out_dir = claim_run_dir(out_dir)
    except RunDirError as err:
        if "cannot be created" in str(err):
            raise JudgeInputError(f"judge.out_dir: {err}") from None
        raise JudgeInputError(f"judge.out_dir: {out_dir} already holds a validity table; choose another") from err
    rows, scored = [], []
    encoder, ref = Encoder(), ReferenceLM()
    for model in sorted(set(labelled.model)):  # validity is per model: a judge is only valid on text it was checked on
        parts = []
        for persona in [p for p in personas if p.name in wanted]:
            others = [p for p in personas if p.name != persona.name]
            if not labelled.of(persona=persona.name, model=model).any():
                continue
            if cfg.steer.judge == "llm":
                own = labelled.subset(labelled.of(persona=persona.name, model=model))
                s, salad = llm_scores(own.prompt, own.reply, persona, judge_from_config(cfg.steer)), None
                moved = (float("nan"), "")
            else:
                own, s, salad = out_of_fold(persona, others, fit_labels(labelled, model), encoder, ref, cfg.seed,
                                            cfg.judge.folds, model)
                moved = transfer(persona, others, labelled, encoder, ref, cfg.seed, model)
            v = validity(own, s, cfg.steer.judge, persona.name, salad, model, moved)
            logger.info("%s / %s: AUROC headline %.3f (n=%d)", model, persona.name, v.auroc_headline, v.n)
            rows.append(v)
            parts.append((own, s))
            scored += [{"model": model, "persona": persona.name, "method": m, "prompt": p, "reply": r,
                        "trait": int(t), "coherent": int(c), "trait_score": float(a), "coherence_score": float(b),
                        "score": float(a * b)}
                       for m, p, r, t, c, a, b in zip(own.method, own.prompt, own.reply, own.trait, own.coherent,
                                                      s.trait, s.coherence)]
        if parts:
            rows.append(pooled(parts, cfg.steer.judge, model))
    write_csv(out_dir / "validity.csv", [v.as_row() for v in rows], COLUMNS)
    write_jsonl(out_dir / "scores.jsonl", scored)
    write_text(out_dir / "validity.md", "# Judge validity on labelled real replies\n\n"
               "Generated by `python -m psm_repro validate-judge`; do not edit by hand. Labels: blind reading "
               "(docs/judge_validation.md). Offline-judge scores are out of fold (grouped by prompt). AUROC headline: "
               "the headline score P(trait) x P(coherent) against the label `trait and coherent`; the column after it "
               "is the same on the sweep-condition replies only. A judge is valid at AUROC headline >= 0.75. "
               "Salad vs fluent trait: median headline score of word salads of the persona's own trait words vs of "
               "held-out replies labelled trait and coherent. Every row is measured on one model's replies; the last "
               "column is the transfer figure: a judge fitted only on the other models' labels, scored on this "
               "model's (shown for comparison, never used for verdicts).\n\n" + render(rows))
    return rows
