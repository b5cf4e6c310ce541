"""Is the post-trained model an assistant? Decided by blind reading, not by a score.

`posttrain` writes each model's reply to the same ordinary user turns into a blind sheet (`reading/sheet.jsonl`:
id, user, reply, shuffled with the seed) and a key the reader never opens (`reading/key.jsonl`: id, model,
item). A reader gives every id two 0/1 labels (RUBRIC, written beside the sheet):

- `answer`: a coherent, on-topic answer to the user, as the user's assistant would give it (the headline);
- `voice`: written as the user's assistant, whatever its quality: it addresses the user as someone it helps, and
  does not speak as the user, as another person with a life of their own, or echo the question.

`voice` without `answer` is a persona selected without the competence to go with it. The labels
(`reading/labels.jsonl`: id, answer, voice, labeller) are joined with the key by `summarise`; a second reader's
(`reading/labels_second.jsonl`) gives the agreement between readers. `tables` re-renders the card with them.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from psm_repro.core import stats
from psm_repro.core.outputs import read_jsonl, write_jsonl, write_text

LABELS = ("answer", "voice")

RUBRIC = """# Blind read: is this reply an assistant's answer?

Each line of sheet.jsonl holds an id, a user's message and a reply (cut at 64 tokens, so a reply may stop
mid-sentence; that alone is not a fault). For each id write one JSON line to labels.jsonl:
{"id": ..., "answer": 0 or 1, "voice": 0 or 1, "labeller": "<your name>"}.

answer = 1 when the reply is a coherent, on-topic answer to the user's message, written as the user's assistant
would write it: it addresses what the user asked or said, it is readable English, and it does not turn into
something else (a made-up personal life, a second question, a new "User:" turn, the same phrase again and again).
A short answer counts. A reply that is polite but ignores the question, that only echoes the question, that loops,
or that says nothing, is 0.

voice = 1 when the reply is written as the user's assistant, whatever its quality: it speaks to the user as
someone it is there to help (answers, advises, apologises, offers help), even if it loops or gets facts wrong.
voice = 0 when it speaks as the user or as another person with their own situation ("I have a mushroom risotto
that I'm making..."), repeats the user's message, or cannot be read as anyone's reply.

Judge each reply on its own.
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


def _labels(labels_path: Path, key: dict) -> tuple[dict[str, dict[str, int]], set[str]]:
    """id -> {label: 0/1} from one reader's file; every key id exactly once, with every label."""
    labels: dict[str, dict[str, int]] = {}
    labellers = set()
    for line, row in read_jsonl(labels_path):
        if not isinstance(row, dict) or row.get("id") not in key or any(row.get(k) not in (0, 1) for k in LABELS):
            raise ValueError(f"{labels_path}:{line}: expected an id from key.jsonl and "
                             + " and ".join(f"{k} 0 or 1" for k in LABELS))
        if row["id"] in labels:
            raise ValueError(f"{labels_path}:{line}: {row['id']} is labelled twice")
        labels[row["id"]] = {k: int(row[k]) for k in LABELS}
        labellers.add(str(row.get("labeller", "")))
    missing = sorted(set(key) - set(labels))
    if missing:
        raise ValueError(f"{labels_path}: {len(missing)} ids of key.jsonl have no label (first {missing[0]})")
    return labels, labellers


def agreement(a: dict[str, int], b: dict[str, int]) -> dict:
    """Raw agreement and Cohen's kappa of two readers over the same ids."""
    from sklearn.metrics import cohen_kappa_score

    ids = sorted(a)
    x, y = [a[i] for i in ids], [b[i] for i in ids]
    return {"n": len(ids), "agreement": float(np.mean(np.equal(x, y))), "kappa": float(cohen_kappa_score(x, y))}


def summarise(reading_dir: Path, n_bootstrap: int, seed: int) -> dict | None:
    """Per label: the share per model with a BCa interval over items, and the paired differences; None when no
    labels are there yet. A second reader's file (`labels_second.jsonl`, same ids) gives the agreement between
    readers per label; the shares are the first reader's."""
    labels_path = reading_dir / "labels.jsonl"
    if not labels_path.exists():
        return None
    key = {row["id"]: row for _, row in read_jsonl(reading_dir / "key.jsonl")}
    labels, labellers = _labels(labels_path, key)
    models = list(dict.fromkeys(r["model"] for r in key.values()))
    n_items = max(r["item"] for r in key.values()) + 1
    out = {"labellers": sorted(labellers), "n_items": n_items}
    for name in LABELS:
        table = {m: np.full(n_items, np.nan) for m in models}
        for k, r in key.items():
            table[r["model"]][r["item"]] = labels[k][name]
        res = {"models": {}, "differences": {}}
        for m in models:
            v, lo, hi = stats.bca_interval(table[m], n_bootstrap, seed)
            res["models"][m] = {"share": v, "ci_low": lo, "ci_high": hi, "n": int(np.isfinite(table[m]).sum())}
        for a, b in (("posttrained", "base"), ("posttrained", "control"), ("control", "base")):
            if a in table and b in table:
                d, lo, hi = stats.paired_bootstrap_diff(table[a], table[b], n_bootstrap, seed)
                res["differences"][f"{a} - {b}"] = {"diff": d, "ci_low": lo, "ci_high": hi}
        out[name] = res
    second = reading_dir / "labels_second.jsonl"
    if second.exists():
        other, who = _labels(second, key)
        out["second_reader"] = {"labellers": sorted(who)} | {
            name: agreement({i: v[name] for i, v in labels.items()}, {i: v[name] for i, v in other.items()})
            for name in LABELS}
    return out
