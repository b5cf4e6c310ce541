"""`tables`' cross-model section: every claim on every model it was run on, side by side, with a call.

A claim's state on one model is read off its interval, never by eye:
  +1  it holds (the interval, or the test the card already ran, is on the claimed side of 0),
  -1  the opposite holds (the interval is entirely on the other side),
   0  no effect either way (the interval spans 0, or the test did not pass),
  None  not measurable on that model (no valid judge, no situation set, a model without a chat format...).
The call over models: "replicates" (holds on every model measured), "opposite" (holds on one, reversed on
another), "does not replicate" (holds on some, not on the others), "holds on neither" (no model), and "not
comparable" where fewer than two models could measure it. For a claim without a side (which of two steering
methods is better, a streetlight proxy), "holds" means the same non-zero sign on every model.
"""

from __future__ import annotations

import csv
from pathlib import Path

from psm_repro.core.embedded import DEFAULT as DEFAULT_MODEL
from psm_repro.report.card import _f

CONTROLS = ("unsteered", "random_latent", "dense_direction", "system_prompt")


def state(lo: float, hi: float, significant: bool = True) -> int | None:
    """+1 / -1 when the interval excludes 0 on that side (and the card's own test passed), 0 otherwise."""
    if lo != lo or hi != hi:  # NaN: not measured
        return None
    if significant and lo > 0:
        return 1
    if significant and hi < 0:
        return -1
    return 0


def call(states: list[int | None], signed: bool = True) -> str:
    """The verdict over models; `signed=False`: the claim is the sign itself, whichever it is."""
    known = [s for s in states if s is not None]
    if len(known) < 2:
        return "not comparable"
    if not signed and known[0] != 0 and all(s == known[0] for s in known):
        return "**replicates**"
    if signed and all(s == 1 for s in known):
        return "**replicates**"
    if 1 in known and -1 in known:
        return "**opposite**"
    if any(s != 0 for s in known) and (signed and 1 in known or not signed):
        return "does not replicate"
    return "holds on neither"


def _iv(d: dict, lo: str = "ci_low", hi: str = "ci_high", key: str = "diff", digits: int = 2) -> str:
    return f"{_f(d[key], digits)} [{_f(d[lo], digits)}, {_f(d[hi], digits)}]"


def _top_latents(results_dir: Path, name: str, k: int = 3) -> str:
    """The top k shared latents and the tokens they fire on most (features.csv of the card)."""
    path = Path(results_dir) / name / "features.csv"
    if not path.exists():
        return "-"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))[:k]
    return "; ".join(f"{r['feature']}: {r['top_tokens'].replace('|', '/')}" for r in rows)


def _table(title: str, intro: str, header: str, models: list[str], rows: list[tuple[str, dict, bool | None]]
           ) -> list[str]:
    """rows: (label, {model: (cell, state)}, signed); signed None: a row shown for reading, with no call."""
    lines = ["", f"### {title}", "", intro, "",
             f"| {header} | " + " | ".join(models) + " | call |", "|---|" + "---|" * (len(models) + 1)]
    for label, cells, signed in rows:
        lines.append(f"| {label} | " + " | ".join(cells.get(m, ("-", None))[0] for m in models)
                     + f" | {'-' if signed is None else call([cells.get(m, ('-', None))[1] for m in models], signed)} |")
    return lines


def _by_persona(runs: list[tuple[str, dict]]) -> dict[str, dict[str, tuple[str, dict]]]:
    out: dict[str, dict[str, tuple[str, dict]]] = {}
    for name, s in runs:
        if s["finder"].get("assistant_only"):
            continue  # an imported file without narratives is not a claim of the shipped personas
        out.setdefault(s["persona"], {})[s["model"]] = (name, s)
    return out


def cross_model_section(runs: list[tuple[str, dict]], em_runs: list[tuple[str, dict]], results_dir: Path) -> list[str]:
    personas = _by_persona(runs)
    # the embedded default first, then the others by name
    models = sorted({m for by in personas.values() for m in by} | {s["model"] for _, s in em_runs},
                    key=lambda m: (m != DEFAULT_MODEL, m))
    if len(models) < 2:
        return []
    lines = ["", "## Across models", "",
             "Each claim on each model, with the same persona files and commands, each model with its own SAE. "
             "The call is read off the intervals (psm_repro/report/cross_model.py): **replicates** = holds on every "
             "model that can measure it, **opposite** = holds on one and is reversed on another, does not replicate "
             "= holds on some only, holds on neither, not comparable = fewer than two models can measure it (for "
             "steering: a judge not validated on that model's own replies gives no verdict, `n/v`)."]
    lines += _finder(personas, models, results_dir) + _situation(personas, models) + _steering(personas, models)
    lines += _methods(personas, models) + _streetlight(personas, models) + _ordinary(personas, models)
    lines += _em(em_runs, models)
    return lines


def _finder(personas, models, results_dir) -> list[str]:
    rows, tops = [], []
    for p, by in sorted(personas.items()):
        cells = {}
        for m, (name, s) in by.items():
            f = s["finder"]
            cells[m] = (f"[{_f(f['top_score'], 2)} vs {_f(f['shuffled_max_score_p95'], 2)}]({name}/summary.md), "
                        f"{f['significant_shared']} pass FDR; reuse {_f(f['reuse_rate'], 2)} "
                        f"({_f(f['reuse_rate_shuffled'], 2)})", 1 if f["significant_shared"] > 0 else 0)
        rows.append((p, cells, True))
        tops.append((p, {m: (_top_latents(results_dir, name), None) for m, (name, _) in by.items()}, True))
    out = _table("Finder: shared latents beat chance", "Top shared score vs the shuffled-label 95th percentile, the "
                 "number of shared latents passing BH-FDR (the claim holds when at least one does), and the reuse "
                 "rate (shuffled expectation in brackets).", "persona", models, rows)
    out += ["", "What the top three shared latents are (the tokens their top activations sit on; dashboards in each "
            "card):", "", "| persona | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    out += [f"| {p} | " + " | ".join(c.get(m, ("-", None))[0] for m in models) + " |" for p, c, _ in tops]
    return out


def _situation(personas, models) -> list[str]:
    rows = []
    for p, by in sorted(personas.items()):
        for read in ("prompt", "reply"):
            cells = {}
            for m, (_, s) in by.items():
                sit, sp = s.get("situation"), s.get("specificity")
                r = (next((x for x in sit["latents"] if x["feature"] == sp["headline_feature"]), None)
                     if sit and not sit.get("skipped") and sp else None)
                if r is None:
                    cells[m] = ("no situation set", None)
                    continue
                sig = bool(r[f"{read}_significant"])
                cells[m] = (f"{_f(r[f'{read}_d'], 2)}{'*' if sig else ''} [{_f(r[f'{read}_ci_low'], 2)}, "
                            f"{_f(r[f'{read}_ci_high'], 2)}]", state(r[f"{read}_ci_low"], r[f"{read}_ci_high"], sig))
            if any(st is not None for _, st in cells.values()):
                rows.append((f"{p}: {read}", cells, True))
    return _table("The assistant in the situation", "The headline latent's paired d, situation minus matched neutral "
                  "user turn, read at the prompt and on the model's own replies; * = BH q < 0.05 (the claim holds "
                  "only then).", "persona: read", models, rows)


def _steering(personas, models) -> list[str]:
    rows = []
    for p, by in sorted(personas.items()):
        for c in CONTROLS:
            cells = {}
            for m, (_, s) in by.items():
                st = s["steering"] if s.get("steering") else None
                d = st["headline"].get(f"vs_{c}") if st else None
                if not d:
                    cells[m] = ("n/a", None)
                    continue
                valid = st["judge_reliable"]
                st_ = (1 if d["beats"] else -1 if d["ci_high"] < 0 else 0) if valid else None
                cells[m] = (_iv(d) + ("" if valid else " n/v"), st_)
            rows.append((f"{p}: latent - {c.replace('_', ' ')}", cells, True))
    return _table("Steering: the latent against each control", "Test-half headline score, latent minus control, "
                  "95% BCa interval; it holds when the card says beats (Holm p < 0.05 with a valid judge).",
                  "persona: comparison", models, rows)


def _methods(personas, models) -> list[str]:
    from psm_repro.report.peers import METHOD_WORDS

    rows = []
    for p, by in sorted(personas.items()):
        names = sorted({r["method"] for _, s in by.values() if s.get("steering")
                        for r in s["steering"].get("methods", []) if r["method"] != "sae_latent"})
        for method in names:
            cells = {}
            for m, (_, s) in by.items():
                r = next((x for x in (s.get("steering") or {}).get("methods", []) if x["method"] == method), None)
                if r is None:
                    cells[m] = ("not built", None)
                    continue
                valid = s["steering"]["judge_reliable"]
                iv = _iv(r, "diff_ci_low", "diff_ci_high", "diff_vs_sae_latent")
                cells[m] = (iv + ("" if valid else " n/v"),
                            state(r["diff_ci_low"], r["diff_ci_high"]) if valid else None)
            rows.append((f"{p}: {METHOD_WORDS.get(method, method)} - SAE latent", cells, False))
    return _table("Steering methods against the SAE latent", "Each method at its own dev-chosen coefficient, minus the "
                  "SAE latent at its own, test-half headline score with a 95% BCa interval; the claim is the sign, "
                  "whichever it is (replicates = the same method is better on every model).",
                  "persona: method", models, rows)


def _streetlight(personas, models) -> list[str]:
    rows = []
    for p, by in sorted(personas.items()):
        for proxy in ("lexicality", "log10_density", "context_consistency"):
            cells = {}
            for m, (_, s) in by.items():
                sl = (s.get("streetlight") or {}).get("proxies", {}).get(proxy)
                if not sl:
                    cells[m] = ("n/a", None)
                    continue
                cells[m] = (f"{_iv(sl)} (p {_f(sl['p_shuffled'], 3)})",
                            state(sl["ci_low"], sl["ci_high"], sl["p_shuffled"] < 0.05))
            rows.append((f"{p}: {proxy.replace('_', ' ')}", cells, False))
    return _table("The streetlight test", "Reused minus assistant-only latents, 95% BCa interval over latents, and the "
                  "shuffled-group p; a difference counts when the interval excludes 0 and p < 0.05, whichever its "
                  "sign.", "persona: proxy", models, rows)


def _ordinary(personas, models) -> list[str]:
    rows = []
    for p, by in sorted(personas.items()):
        for key in ("assistant_minus_prose", "user_minus_prose", "markup_minus_prose"):
            cells = {}
            for m, (_, s) in by.items():
                o = s.get("ordinary")
                if not o:
                    continue
                if o.get("skipped"):
                    cells[m] = (f"skipped: {o['skipped']}", None)
                    continue
                d = o["contrasts"][key]["rate"]["ai_minus_random"]
                cells[m] = (f"{d['value']:+.2%} [{d['ci_low']:+.2%}, {d['ci_high']:+.2%}]",
                            state(d["ci_low"], d["ci_high"]))
            if cells:
                rows.append((f"{p}: {key.removesuffix('_minus_prose')} - prose", cells, True))
    if not rows:
        return []
    return _table("AI-entity latents in ordinary chats", "Share of (token, latent) pairs firing, chat tokens minus the "
                  "same content as prose, narrative AI-entity latents minus density-matched random latents, 95% BCa "
                  "interval over items; the claim holds when it is above 0.", "persona: tokens", models, rows)


def _em(em_runs, models) -> list[str]:
    by: dict[str, dict[str, dict]] = {}
    for _, s in em_runs:
        by.setdefault(s["experiment"], {})[s["model"]] = s
    rows = []
    for exp, ms in sorted(by.items()):
        def cell(key):
            out = {}
            for m, s in ms.items():
                d, v = s["headline"][key], s.get("judge_validity")
                valid = bool(v) and s["headline"].get("judge_valid", True)
                out[m] = (_iv(d, digits=3) + ("" if valid else " n/v"), state(d["ci_low"], d["ci_high"]) if valid
                          else None)
            return out
        rows.append((f"{exp}: narrow - control, broad misalignment", cell("narrow_vs_control_broad"), True))
        rows.append((f"{exp}: toxic latent rank in the diff",
                     {m: (f"{s['headline']['toxic_latent']}: {s['headline']['toxic_rank']} of {s['d_sae']}", None)
                      for m, s in ms.items()}, None))
        for check in ("top_amplify", "toxic_amplify", "top_suppress", "toxic_suppress"):
            cells = {}
            for m, s in ms.items():  # a check is only made with a judge validated on that model's replies
                if not s["headline"].get("judge_valid", True):
                    cells[m] = ("n/v", None)
                else:
                    won = s["headline"][f"{check}_beats_random"]
                    cells[m] = ("yes" if won else "no", 1 if won else 0)
            rows.append((f"{exp}: {check.replace('_', ' ')} beats random", cells, True))
    if not rows:
        return []
    return _table("Emergent misalignment", "Narrow fine-tune minus the control fine-tune, broad misalignment rate, 95% "
                  "interval; the toxic-persona latent's rank among all latents in the narrow - control diff (no "
                  "call: a rank has no interval); and the causal checks (steering the latent beats a random one).",
                  "run: claim", models, rows)
