"""Word n-gram overlap between corpus text and the experiment files, so no evaluation text leaks into SAE training."""

from __future__ import annotations

import re
from pathlib import Path

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
EXPERIMENT_SUFFIXES = (".yaml", ".yml", ".jsonl", ".json", ".txt", ".csv")


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Lower-cased word n-grams of `text` (punctuation and JSON/YAML syntax ignored)."""
    words = WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def experiment_ngrams(root: Path, n: int) -> set[tuple[str, ...]]:
    """Every word n-gram of every text file under `root` (persona, judge-set and EM files)."""
    out: set[tuple[str, ...]] = set()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in EXPERIMENT_SUFFIXES:
            out |= ngrams(path.read_text(errors="replace"), n)
    return out


def shared(text: str, reference: set[tuple[str, ...]], n: int) -> list[str]:
    """The n-grams of `text` that also occur in `reference`, as strings."""
    return sorted(" ".join(g) for g in ngrams(text, n) & reference)
