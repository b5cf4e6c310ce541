"""Blind-read the model's own replies to a card's situation prompts: does it act out the situation?

    .venv/bin/python scripts/blind_situation_replies.py write <blind_dir> <key_dir> persona [persona ...]
    .venv/bin/python scripts/blind_situation_replies.py score <blind_dir> <key_dir> <out_dir> persona:label [...]

`write` takes the first sampled reply per prompt from results/steer_<persona>/situation_replies.jsonl (44
situation and 44 neutral prompts), shuffles them and writes <blind_dir>/<persona>.jsonl (id, conversation,
reply only). Which set a reply belongs to goes to <key_dir>, which the reader never opens. The reader adds a
0/1 trait label (its name is given per persona, e.g. panic:distress) and `coherent`, reading every reply in
full, into <blind_dir>/<persona>_labels.jsonl.

`score` joins labels and key, writes the joined rows to <out_dir>/<persona>.jsonl and prints per set the count
of replies read as trait, coherent and both, with the exact one-sided sign test over the matched pairs
(situation trait, neutral not vs the reverse).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from scipy.stats import binomtest

from psm_repro.core.outputs import read_jsonl as _read_jsonl, write_jsonl
from psm_repro.core.paths import PROJECT_ROOT
from psm_repro.core.personas import resolve_persona


def read_jsonl(path: Path) -> list[dict]:
    return [row for _, row in _read_jsonl(path)]


def write(blind_dir: Path, key_dir: Path, persona: str) -> None:
    p = resolve_persona(persona, None)
    rows = [r for r in read_jsonl(PROJECT_ROOT / "results" / f"steer_{persona}" / "situation_replies.jsonl")
            if r["sample"] == 0]
    random.Random(11).shuffle(rows)
    blind, key = [], []
    for k, r in enumerate(rows):
        chat = getattr(p, r["set"])[r["item"]]
        conversation = "\n".join(f"{t['role'].upper()}: {t['content']}" for t in chat)
        blind.append({"id": f"{persona}-{k:03d}", "conversation": conversation, "reply": r["reply"]})
        key.append({"id": f"{persona}-{k:03d}", "set": r["set"], "item": r["item"]})
    write_jsonl(blind_dir / f"{persona}.jsonl", blind)
    write_jsonl(key_dir / f"{persona}.jsonl", key)


def score(blind_dir: Path, key_dir: Path, out_dir: Path, persona: str, trait: str) -> None:
    labels = {r["id"]: r for r in read_jsonl(blind_dir / f"{persona}_labels.jsonl")}
    replies = {b["id"]: b["reply"] for b in read_jsonl(blind_dir / f"{persona}.jsonl")}
    joined = [{**k, trait: labels[k["id"]][trait], "coherent": labels[k["id"]]["coherent"],
               "note": labels[k["id"]].get("note", ""), "reply": replies[k["id"]]}
              for k in read_jsonl(key_dir / f"{persona}.jsonl")]
    write_jsonl(out_dir / f"{persona}.jsonl", joined)
    for s in ("situation", "situation_neutral"):
        rows = [r for r in joined if r["set"] == s]
        print(f"{persona} {s}: n {len(rows)}, {trait} {sum(r[trait] for r in rows)}, coherent "
              f"{sum(r['coherent'] for r in rows)}, both {sum(r[trait] * r['coherent'] for r in rows)}")
    pairs: dict[int, dict[str, int]] = {}
    for r in joined:
        pairs.setdefault(r["item"], {})[r["set"]] = r[trait]
    up = sum(v["situation"] > v["situation_neutral"] for v in pairs.values())
    down = sum(v["situation"] < v["situation_neutral"] for v in pairs.values())
    p = binomtest(up, up + down, 0.5, alternative="greater").pvalue if up + down else float("nan")
    print(f"{persona} discordant pairs: situation only {up}, neutral only {down}, sign test p {p:.3f}")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "write":
        for name in args[2:]:
            write(Path(args[0]), Path(args[1]), name)
    elif command == "score":
        for spec in args[3:]:
            name, trait = spec.split(":")
            score(Path(args[0]), Path(args[1]), Path(args[2]), name, trait)
    else:
        sys.exit(__doc__)
