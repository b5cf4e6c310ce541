"""Word n-gram overlap between corpus text and the experiment files, so no evaluation text leaks into SAE training."""

from __future__ import annotations

import json
import re
from pathlib import Path

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
EXPERIMENT_SUFFIXES = (".yaml", ".yml", ".jsonl", ".json", ".txt", ".csv")
# Fields of JSONL records that a model wrote (labelled judge and EM replies). They are not evaluation inputs: the
# SAE never reads them, only the judges do, and two samples of small models share stock 12-grams by chance
# ("i'm not going to lie to you" twice over). Every prompt, persona and question field still counts.
MODEL_WRITTEN = ("reply",)


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Lower-cased word n-grams of `text` (punctuation and JSON/YAML syntax ignored)."""
    words = WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _evaluation_text(path: Path) -> str:
    """The text of an experiment file, less the model-written fields of its JSONL records."""
    text = path.read_text(errors="replace")
    if path.suffix != ".jsonl":
        return text
    kept = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            kept.append(line)
            continue
        if isinstance(record, dict):
            record = {k: v for k, v in record.items() if k not in MODEL_WRITTEN}
        kept.append(json.dumps(record))
    return "\n".join(kept)


def experiment_ngrams(root: Path, n: int) -> set[tuple[str, ...]]:
    """Every word n-gram of every text file under `root` (persona, judge-set and EM files), model replies excepted."""
    out: set[tuple[str, ...]] = set()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in EXPERIMENT_SUFFIXES:
            out |= ngrams(_evaluation_text(path), n)
    return out


def shared(text: str, reference: set[tuple[str, ...]], n: int) -> list[str]:
    """The n-grams of `text` that also occur in `reference`, as strings."""
    return sorted(" ".join(g) for g in ngrams(text, n) & reference)
