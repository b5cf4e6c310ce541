"""`bench`: what the peer methods cost `run` (psm_repro/peers/stage.py, psm_repro/peers/ab_metric.py)."""

from __future__ import annotations

import time
from pathlib import Path

from psm_repro.config import RunConfig

PEER_SHARE = 0.40
"""The peer methods (two vectors, their sweep rows, the A/B metric) may add at most this much to `run`."""


def peer_cost(model, cfg: RunConfig, with_peers: dict, end_to_end) -> dict:
    """What the peer methods add to `run`: the end-to-end run above (peers on, replies cached as on any machine that
    has run the persona once) against the same run with `peers.enabled=false`; and, apart, the one-time sampling
    of the persona-vector extraction replies into an empty cache (in this process)."""
    import tempfile

    from psm_repro.core.personas import resolve_persona
    from psm_repro.peers.vectors import sample_extraction

    without = end_to_end(Path("."), ("peers.enabled=false",))
    if not (with_peers.get("ok") and without["ok"]):
        return {"skipped": "a run failed"}
    persona = resolve_persona("secrecy", None)
    with tempfile.TemporaryDirectory(prefix="psm_repro_bench_") as tmp:
        start = time.perf_counter()
        sample_extraction(model, persona.peers, cfg.peers, cfg.seed, Path(tmp))
        cold = time.perf_counter() - start
    return {"with_s": with_peers["wall_s"], "without_s": without["wall_s"],
            "share": with_peers["wall_s"] / without["wall_s"] - 1, "extraction_cold_s": cold,
            "extraction_rows": 2 * len(persona.peers.instruction) * len(persona.peers.questions) * cfg.peers.samples,
            "stages": with_peers.get("stage_seconds", {})}


def peer_rows(c: dict) -> list[str]:
    if "share" not in c:
        return [f"| peer methods | {c.get('skipped', 'not measured')} | | |"] if c else []
    return [f"| peer methods (persona vector, CAA vector, A/B metric): `run` with ({c['with_s']:.0f} s) / without "
            f"(`peers.enabled=false`, {c['without_s']:.0f} s) - 1 | {c['share']:.0%} | <= {PEER_SHARE:.0%} | "
            f"{'yes' if c['share'] <= PEER_SHARE else 'NO'} |",
            f"| same, first run of a persona on a machine: extraction replies sampled ({c['extraction_rows']} rows, "
            f"{c['extraction_cold_s']:.0f} s) | {(c['with_s'] + c['extraction_cold_s']) / c['without_s'] - 1:.0%} | | |"]
