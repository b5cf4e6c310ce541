"""Join blind reading labels back onto a judge set by reply id (docs/judge_validation.md).

    .venv/bin/python scripts/merge_labels.py <labels.jsonl> <labeller-name>
    .venv/bin/python scripts/merge_labels.py --reference-logprobs   # after the last merge

Each label line is {"id", "trait", "coherent"}; the persona is read from the judge set rows. A label for an
id that is not in any set, or a set row labelled twice with different values, is an error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from psm_repro.core.outputs import read_jsonl, write_jsonl
from psm_repro.core.paths import PROJECT_ROOT

SETS = PROJECT_ROOT / "experiments" / "judge_sets"


def merge(labels_path: Path, labeller: str) -> None:
    labels = {}
    for n, x in read_jsonl(labels_path, SystemExit):
        if x["trait"] not in (0, 1) or x["coherent"] not in (0, 1):
            raise SystemExit(f"{labels_path}:{n}: trait and coherent must be 0 or 1")
        labels[x["id"]] = x
    found = set()
    for path in sorted(SETS.glob("*.jsonl")):
        rows = [r for _, r in read_jsonl(path)]
        changed = False
        for r in rows:
            lab = labels.get(r["id"])
            if lab is None:
                continue
            if r.get("trait") is not None and (r["trait"], r["coherent"]) != (lab["trait"], lab["coherent"]):
                raise SystemExit(f"{path}: reply {r['id']} already labelled differently")
            r |= {"trait": lab["trait"], "coherent": lab["coherent"], "labeller": labeller}
            found.add(r["id"])
            changed = True
        if changed:
            write_jsonl(path, rows)
    missing = sorted(set(labels) - found)
    if missing:
        raise SystemExit(f"{labels_path}: {len(missing)} ids match no judge-set reply, e.g. {missing[0]}")
    print(f"merged {len(found)} labels from {labels_path}")




def refresh_reference_logprobs() -> None:
    """Write the reference LM's log-probs of every labelled reply beside the sets (computed where missing)."""
    from psm_repro.judges.judge import REFERENCE_SEED, ReferenceLM, load_labelled

    lab = load_labelled(SETS)
    ref = ReferenceLM()
    values = ref(lab.prompt, lab.reply)
    keys = [ref.key(p, r) for p, r in zip(lab.prompt, lab.reply)]
    (SETS / REFERENCE_SEED).write_text(json.dumps(dict(sorted(zip(keys, map(float, values)))), indent=0) + "\n")
    print(f"wrote {SETS / REFERENCE_SEED} ({len(keys)} replies)")


if __name__ == "__main__":
    if sys.argv[1:] == ["--reference-logprobs"]:
        refresh_reference_logprobs()
    else:
        merge(Path(sys.argv[1]), sys.argv[2])
