"""Write the blinded view of a judge set's unlabelled replies: only id, prompt and reply, in shuffled order.

    .venv/bin/python scripts/blind_judge_pool.py <out_dir> [persona ...]

The labeller gets <out_dir>/<persona>.jsonl and the persona's rubric; method, coefficient and latent stay in
experiments/judge_sets/<persona>.jsonl (docs/judge_validation.md).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from psm_repro.core.outputs import read_jsonl, write_jsonl
from psm_repro.core.paths import PROJECT_ROOT
from psm_repro.core.personas import resolve_persona

SETS = PROJECT_ROOT / "experiments" / "judge_sets"


def blind(persona: str, out_dir: Path) -> None:
    rows = [r for _, r in read_jsonl(SETS / f"{persona}.jsonl")]
    rows = [r for r in rows if r.get("trait") is None]  # only what is not yet labelled
    random.Random(persona).shuffle(rows)
    write_jsonl(out_dir / f"{persona}.jsonl", [{"id": r["id"], "prompt": r["prompt"], "reply": r["reply"]}
                                              for r in rows])
    rubric = resolve_persona(persona, None).judge.rubric
    (out_dir / f"{persona}.rubric.txt").write_text(rubric + "\n")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    for name in sys.argv[2:] or sorted(p.stem for p in SETS.glob("*.jsonl")):
        blind(name, out)
