"""Specificity: is a found latent about this persona, or does it pass for many unrelated ones?

For every other persona in `finder.specificity_dir`, the finder's scripted contrast (min of narrative d and
assistant d, sign-flip p, BH q) is computed once per (model, SAE, persona file, finder settings, seed) and
cached by that content hash. A latent significant (q < alpha, score > 0) on `finder.generic_personas` or more
other personas is flagged generic; the card's headline latent is the best-ranked one that is not generic.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np

from psm_repro.config import FinderConfig
from psm_repro.core.finder import persona_activations, rank_latents
from psm_repro.core.outputs import write_bytes
from psm_repro.core.paths import PROJECT_ROOT
from psm_repro.core.personas import Persona, load_persona

logger = logging.getLogger(__name__)


def _key(model_id: str, sae_id: str, persona: Persona, cfg: FinderConfig, seed: int) -> str:
    facts = {"model": model_id, "sae": sae_id, "persona": hashlib.sha256(persona.path.read_bytes()).hexdigest(),
             "aggregation": cfg.aggregation, "n_permutations": cfg.n_permutations,
             "min_active_items": cfg.min_active_items, "seed": seed}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def persona_scores(model, sae, persona: Persona, cfg: FinderConfig, seed: int, cache_dir: Path,
                   ids: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """(score_F, q_F) of the scripted shared contrast for one persona, from the cache when present."""
    from psm_repro.core.locks import entry_lock

    path = cache_dir / f"{persona.name}-{_key(*ids, persona, cfg, seed)[:24]}.npz"
    cached = _read_scores(path)
    if cached is not None:
        return cached
    with entry_lock(path):  # one computation per entry across processes sharing the cache
        cached = _read_scores(path)
        return cached if cached is not None else _compute_scores(model, sae, persona, cfg, seed, path)


def _read_scores(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            return z["score"], z["q"]
    except (OSError, ValueError, KeyError):
        logger.warning("specificity cache %s is unreadable; recomputing", path)
    return None


def _compute_scores(model, sae, persona: Persona, cfg: FinderConfig, seed: int, path: Path
                    ) -> tuple[np.ndarray, np.ndarray]:
    ranked = rank_latents(persona_activations(model, sae, persona, cfg), cfg, seed)
    score, q = ranked["score"].numpy().astype(np.float32), np.asarray(ranked["q"], dtype=np.float32)
    buf = io.BytesIO()
    np.savez(buf, score=score, q=q)
    write_bytes(path, buf.getvalue())
    return score, q


def other_personas(persona: Persona, directory: str) -> list[Persona]:
    root = Path(directory) if Path(directory).is_absolute() else PROJECT_ROOT / directory
    if not root.is_dir():
        raise ValueError(f"finder.specificity_dir: no folder {root}")
    return [load_persona(p) for p in sorted(root.glob("*.yaml")) if p.stem != persona.name]


def specificity(model, sae, persona: Persona, rows: list[dict], cfg: FinderConfig, seed: int,
                cache_dir: Path) -> dict:
    """Flag each row's latent generic or not (adds `other_personas_passed` and `generic` to the rows);
    returns the summary's `specificity` section with the headline latent (best-ranked non-generic)."""
    from psm_repro.core.feature_cache import model_hash, sae_hash

    ids = (model_hash(model), sae_hash(sae))
    others = other_personas(persona, cfg.specificity_dir)
    scores = {o.name: persona_scores(model, sae, o, cfg, seed, cache_dir, ids) for o in others}
    for r in rows:
        f = r["feature"]
        passed = [name for name, (score, q) in scores.items() if q[f] < cfg.fdr_alpha and score[f] > 0]
        r["other_personas_passed"] = " ".join(passed)
        r["generic"] = len(passed) >= cfg.generic_personas
    headline = next((r["feature"] for r in rows if not r["generic"]), None)
    table = {r["feature"]: {name: float(score[r["feature"]]) for name, (score, _) in scores.items()}
             for r in rows[:10]}
    return {"others": [o.name for o in others], "generic_personas": cfg.generic_personas,
            "headline_feature": headline, "generic_in_top10": [r["feature"] for r in rows[:10] if r["generic"]],
            "top10_scores_elsewhere": table}
