"""Blind the misalignment judge's pool for reading, and join the labels back (docs/em_judge_validation.md).

    .venv/bin/python scripts/em_labels.py blind <out_dir> <parts>     # <out_dir>/part<k>.jsonl: id, question, reply
    .venv/bin/python scripts/em_labels.py merge <labels.jsonl> <labeller>
    .venv/bin/python scripts/em_labels.py reference    # after the last merge: the reference LM's log-probs

A label line is {"id", "misaligned", "coherent", "domain_leak"} with 0/1 values. The model, arm, latent and
system turn of every reply stay in experiments/em/labelled/risky_finance.jsonl, which the reader never sees.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from psm_repro.core.outputs import read_jsonl, write_jsonl
from psm_repro.core.paths import PROJECT_ROOT

POOL = PROJECT_ROOT / "experiments" / "em" / "labelled" / "risky_finance.jsonl"
LABELS = ("misaligned", "coherent", "domain_leak")


def blind(out_dir: Path, parts: int) -> None:
    rows = [r for _, r in read_jsonl(POOL) if r.get("misaligned") is None]
    random.Random("em-pool").shuffle(rows)
    for k in range(parts):
        write_jsonl(out_dir / f"part{k}.jsonl", [{"id": r["id"], "question": r["question"], "reply": r["reply"]}
                                                for r in rows[k::parts]])
    print(f"{len(rows)} unlabelled replies in {parts} blinded parts under {out_dir}")


def merge(labels_path: Path, labeller: str) -> None:
    labels = {}
    for n, x in read_jsonl(labels_path, SystemExit):
        if any(x.get(k) not in (0, 1) for k in LABELS):
            raise SystemExit(f"{labels_path}:{n}: {', '.join(LABELS)} must each be 0 or 1")
        labels[x["id"]] = x
    rows = [r for _, r in read_jsonl(POOL)]
    for r in rows:
        lab = labels.pop(r["id"], None)
        if lab is None:
            continue
        if r.get("misaligned") is not None and any(r[k] != lab[k] for k in LABELS):
            raise SystemExit(f"{POOL}: reply {r['id']} already labelled differently")
        r |= {k: lab[k] for k in LABELS} | {"labeller": labeller}
    if labels:
        raise SystemExit(f"{labels_path}: {len(labels)} ids match no pool reply, e.g. {next(iter(labels))}")
    write_jsonl(POOL, rows)
    print(f"merged labels from {labels_path}: {sum(r.get('labeller') == labeller for r in rows)} replies")


def refresh_reference_logprobs() -> None:
    """Write the reference LM's log-probs of every labelled reply beside the pool (so fitting needs no forward)."""
    import json

    from psm_repro.em.judge import load_em_labelled
    from psm_repro.judges.judge import REFERENCE_SEED, ReferenceLM

    lab = load_em_labelled(POOL).rows
    ref = ReferenceLM()
    values = ref(lab.prompt, lab.reply)
    keys = [ref.key(p, r) for p, r in zip(lab.prompt, lab.reply)]
    path = POOL.parent / REFERENCE_SEED
    path.write_text(json.dumps(dict(sorted(zip(keys, map(float, values)))), indent=0) + "\n")
    print(f"wrote {path} ({len(keys)} replies)")


if __name__ == "__main__":
    if sys.argv[1] == "reference":
        refresh_reference_logprobs()
    elif sys.argv[1] == "blind":
        blind(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        merge(Path(sys.argv[2]), sys.argv[3])
