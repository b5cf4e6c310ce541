"""Is the post-trained model an assistant? Decided by blind reading, not by a score.

`posttrain` writes each model's reply to the same ordinary user turns into a blind sheet (`reading/sheet.jsonl`:
id, user, reply, shuffled with the seed) and a key the reader never opens (`reading/key.jsonl`: id, model,
item). A reader labels every id with `assistant` = 1 when the reply is a coherent, on-topic answer to the user,
given as the user's assistant (not a made-up life of its own, an echo, a loop or another user turn), else 0
(RUBRIC, written beside the sheet). The labels (`reading/labels.jsonl`: id, assistant, labeller) are joined
with the key by `summarise`; `tables` re-renders the card with them.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from psm_repro.core import stats
from psm_repro.core.outputs import read_jsonl, write_jsonl, write_text

RUBRIC = """# Blind read: is this reply an assistant's answer?

Each line of sheet.jsonl holds an id, a user's message and a reply. For each id write one JSON line to
labels.jsonl: {"id": ..., "assistant": 0 or 1, "labeller": "<your name>"}.

assistant = 1 when the reply is a coherent, on-topic answer to the user's message, written as the user's
assistant would write it: it addresses what the user asked or said, it is readable English, and it does not
turn into something else (a made-up personal life, a second question, a new "User:" turn, a repeated phrase).
A short answer counts. A reply that is polite but ignores the question, that only echoes the question, that
loops, or that is cut off before it says anything, is 0. Judge each reply on its own.
"""


def write_sheet(out_dir: Path, users: list[str], replies: dict[str, list[str]], seed: int) -> int:
    """Shuffle every model's reply to every user turn into one blind sheet; returns the number of rows."""
    rows = [(m, i, r) for m, rs in replies.items() for i, r in enumerate(rs)]
    random.Random(seed).shuffle(rows)
    ids = [f"r{k:04d}" for k in range(len(rows))]
    write_jsonl(out_dir / "sheet.jsonl", [{"id": k, "user": users[i], "reply": r} for k, (_, i, r) in zip(ids, rows)])
    write_jsonl(out_dir / "key.jsonl", [{"id": k, "model": m, "item": i} for k, (m, i, _) in zip(ids, rows)])
    write_text(out_dir / "RUBRIC.md", RUBRIC)
    return len(rows)


def summarise(reading_dir: Path, n_bootstrap: int, seed: int) -> dict | None:
    """Share of assistant answers per model with a BCa interval over items, and the paired differences; None when
    no labels are there yet. Every key id must carry exactly one 0/1 label."""
    labels_path = reading_dir / "labels.jsonl"
    if not labels_path.exists():
        return None
    key = {row["id"]: row for _, row in read_jsonl(reading_dir / "key.jsonl")}
    labels: dict[str, int] = {}
    labellers = set()
    for line, row in read_jsonl(labels_path):
        if not isinstance(row, dict) or row.get("id") not in key or row.get("assistant") not in (0, 1):
            raise ValueError(f"{labels_path}:{line}: expected an id from key.jsonl and assistant 0 or 1")
        if row["id"] in labels:
            raise ValueError(f"{labels_path}:{line}: {row['id']} is labelled twice")
        labels[row["id"]] = int(row["assistant"])
        labellers.add(str(row.get("labeller", "")))
    missing = sorted(set(key) - set(labels))
    if missing:
        raise ValueError(f"{labels_path}: {len(missing)} ids of key.jsonl have no label (first {missing[0]})")
    models = list(dict.fromkeys(r["model"] for r in key.values()))
    n_items = max(r["item"] for r in key.values()) + 1
    table = {m: np.full(n_items, np.nan) for m in models}
    for k, r in key.items():
        table[r["model"]][r["item"]] = labels[k]
    out = {"labellers": sorted(labellers), "n_items": n_items, "models": {}, "differences": {}}
    for m in models:
        v, lo, hi = stats.bca_interval(table[m], n_bootstrap, seed)
        out["models"][m] = {"share": v, "ci_low": lo, "ci_high": hi, "n": int(np.isfinite(table[m]).sum())}
    for a, b in (("posttrained", "base"), ("posttrained", "control"), ("control", "base")):
        if a in table and b in table:
            d, lo, hi = stats.paired_bootstrap_diff(table[a], table[b], n_bootstrap, seed)
            out["differences"][f"{a} - {b}"] = {"diff": d, "ci_low": lo, "ci_high": hi}
    return out
