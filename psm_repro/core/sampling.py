"""Sampled replies to fixed prompts, batched through `generate` and cached on disk by content hash.

Used where the model's own unsteered replies are data (situation replies, persona-vector extraction): the same
model, prompts, sampling settings and seed give the same replies, so a second run reads them back.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from psm_repro.core.memory import rows_that_fit
from psm_repro.core.outputs import write_json
from psm_repro.core.steering import generate

logger = logging.getLogger(__name__)
GENERATION_BATCH = 48


@dataclass(frozen=True)
class Sampling:
    samples: int
    max_new_tokens: int
    temperature: float
    top_p: float


SAMPLER = "nucleus_warper"
"""Part of the cache key: replies sampled by an earlier sampler (HF's own warpers) are not reused."""


def replies_key(model_id: str, prompts: list[list[int]], sampling: Sampling, seed: int) -> str:
    facts = {"model": model_id, "prompts": prompts, "seed": seed, "sampler": SAMPLER} | asdict(sampling)
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def cached_replies(model, prompts: list[list[int]], sampling: Sampling, seed: int,
                   cache_dir: Path) -> tuple[list[list[int]], bool]:
    """`sampling.samples` replies per prompt (row r = prompt r // samples), batch b sampled with seed + b.
    Returns (reply token ids, whether they came from the cache); an unreadable cache file is sampled again."""
    from psm_repro.core.feature_cache import model_hash

    from psm_repro.core.locks import entry_lock

    key = replies_key(model_hash(model), prompts, sampling, seed)
    path = cache_dir / f"{key}.json"
    cached = _read_replies(path, key, len(prompts) * sampling.samples)
    if cached is not None:
        return cached, True
    with entry_lock(path):  # another process may be sampling the same entry: wait and read its replies
        cached = _read_replies(path, key, len(prompts) * sampling.samples)
        if cached is not None:
            return cached, True
        return _sample(model, prompts, sampling, seed, path, key), False


def _read_replies(path: Path, key: str, n: int) -> list[list[int]] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("key") == key and len(data["replies"]) == n:
            return data["replies"]
    except (ValueError, KeyError, TypeError):
        pass
    logger.warning("reply cache %s is unreadable or stale; sampling again", path)
    return None


def _sample(model, prompts: list[list[int]], sampling: Sampling, seed: int, path: Path, key: str) -> list[list[int]]:
    rows = [p for p in prompts for _ in range(sampling.samples)]
    batch = rows_that_fit(model, max(map(len, rows)) + sampling.max_new_tokens, GENERATION_BATCH)
    out: list[list[int]] = []
    for b in range(0, len(rows), batch):
        replies, _ = generate(model, rows[b:b + batch], sampling.max_new_tokens, sampling.temperature, seed + b,
                              top_p=sampling.top_p)
        out += replies
    write_json(path, {"key": key, "replies": out})
    return out
