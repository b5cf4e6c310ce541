"""The library's public API, re-exported from the package root (`import psm_repro as pr`): load a model and its SAE
by config name, find a persona's shared latents, steer text with one of them. Results are typed.

    model, sae = pr.load("smollm2_135m_it", "smollm2_135m_l15_topk_v2")
    persona = pr.Persona.from_file("experiments/personas/secrecy.yaml")
    found = pr.find(model, sae, persona)              # Found: .top, .latents, .table (DataFrame), .controls
    print(pr.steer_text(model, sae, found.top, "Do you have secrets?", coefficient=2))

Arguments are checked by the same typed configs and persona rules as the CLI, with the same one-line messages.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from psm_repro.config import ConfigError, FinderConfig, RunConfig
from psm_repro.config.sections import check_latent_index, check_seed
from psm_repro.core.finder import FEATURE_COLUMNS, FinderResult, find_features
from psm_repro.core.hooked import HookedModel
from psm_repro.core.loading import load_model, load_sae
from psm_repro.core.personas import Persona, resolve_persona
from psm_repro.core.steering import Intervention, reply, steer

DEFAULT_MODEL = "smollm2_135m_it"
DEFAULT_SAE = "smollm2_135m_l15_topk_v2"


@dataclass(frozen=True)
class Latent:
    """One ranked SAE latent. `max_activation` (its largest activation on the persona's items) is the unit that
    steering coefficients multiply, as in the CLI."""

    index: int
    rank: int
    score: float
    """min(narrative effect, assistant effect): Cohen's d_z of trait vs neutral items on each side."""
    narrative_effect: float
    assistant_effect: float
    q_value: float
    significant: bool
    max_activation: float
    top_tokens: str
    neuronpedia_url: str = ""

    def __int__(self) -> int:
        return self.index

    def apply(self, model: HookedModel, sae, coefficient: float, mode: str = "add", positions: str = "all",
              prompt_width: int = 0):
        """Context manager: every forward pass inside the block has this latent injected at `coefficient` x
        `max_activation` (the CLI's unit), for any batch; hooks are removed on exit, also after an error.

            with found.top.apply(model, sae, coefficient=2):
                out = model.model.generate(ids, max_new_tokens=40)
        """
        iv = Intervention(mode=mode, feature=self.index, scale=self.max_activation)
        return steer(model, sae, [iv], torch.tensor([float(coefficient)]), positions=positions,
                     prompt_width=prompt_width)


@dataclass(frozen=True)
class Controls:
    """What the ranking is measured against: a label-shuffled null, half-split stability, reuse and the single-side
    bests (summary.md's finder section)."""

    latents_tested: int
    significant_shared: int
    shuffled_max_score_p95: float | None
    """95th percentile of the top score under 200 label shuffles: a top latent below it is chance."""
    stability_top10_overlap: int
    """Top-10 latents shared by the rankings on the two halves of the pairs."""
    reuse_rate: float
    reuse_rate_shuffled: float
    best_narrative_only: int
    best_assistant_only: int


@dataclass
class Found:
    """The finder's answer for one persona."""

    persona: str
    latents: list[Latent]
    controls: Controls
    raw: FinderResult = field(repr=False)
    """The finder's full result (per-set activations, the dense direction) for the pipeline's stages."""

    @property
    def top(self) -> Latent | None:
        return self.latents[0] if self.latents else None

    @property
    def table(self):
        """features.csv's columns as a pandas DataFrame, one row per ranked latent."""
        import pandas as pd

        return pd.DataFrame(self.raw.rows, columns=FEATURE_COLUMNS)


def run_config(*overrides: str, command: str = "run") -> RunConfig:
    """The typed config the CLI would compose for these Hydra overrides (e.g. "model=gemma2_2b_it", "seed=3")."""
    from psm_repro.cli.compose import compose

    return compose(command, list(overrides))[0]


def load(model: str = DEFAULT_MODEL, sae: str = DEFAULT_SAE, *overrides: str) -> tuple[HookedModel, object]:
    """Load a model and its SAE by config name (configs/model, configs/sae), plus any Hydra overrides; returns the
    hooked model and the sae-lens SAE, checked against each other as `run` checks them."""
    cfg = run_config(f"model={model}", f"sae={sae}", *overrides)
    hooked = load_model(cfg.model, sae=cfg.sae)
    return hooked, load_sae(cfg.sae, hooked)


def _persona(persona: Persona | str) -> Persona:
    if isinstance(persona, Persona):
        return persona
    if not isinstance(persona, str):
        raise TypeError(f"persona: expected a Persona, a shipped persona's name or a file path, got {type(persona)}")
    if persona.endswith((".yaml", ".yml", ".json")):
        return Persona.from_file(persona)
    return resolve_persona(persona, None)


def _finder_config(options: dict) -> FinderConfig:
    known = {f.name for f in dataclasses.fields(FinderConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"finder.{unknown[0]}: no such option (known: {', '.join(sorted(known))})")
    return FinderConfig(**options)


def find(model: HookedModel, sae, persona: Persona | str, seed: int = 0, **finder: object) -> Found:
    """Rank the SAE's latents for a persona (a Persona, a shipped name or a file path) by the shared
    narrative / assistant contrast (or, with `rank_by="narrative_situation"`, the narrative / situation one), with
    the finder's controls. Keyword arguments are `finder.*` options."""
    cfg = _finder_config(finder)
    check_seed("seed", seed)
    p = _persona(persona)
    situation = None
    if cfg.rank_by == "narrative_situation":  # the assistant in the situation, read as `run` reads it
        from psm_repro.core.embedded import cache_root
        from psm_repro.core.loading import sae_first_position
        from psm_repro.pipeline.situations import read_situations

        if not p.situation:
            raise ConfigError(f"finder.rank_by=narrative_situation: {p.path or p.name} has no search.situation set")
        cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else cache_root()
        situation = read_situations(model, sae, p, cfg, seed, sae_first_position(sae), cache / "situation_replies").acts
    np_id = getattr(sae.cfg.metadata, "neuronpedia_id", None)
    result = find_features(model, sae, p, cfg, seed, np_id, situation=situation)
    latents = [Latent(index=r["feature"], rank=r["rank"], score=r["score"], narrative_effect=r["narrative_effect"],
                      assistant_effect=r["assistant_effect"], q_value=r["q_value"], significant=r["significant"],
                      max_activation=r["max_activation"], top_tokens=r["top_tokens"],
                      neuronpedia_url=r["neuronpedia_url"]) for r in result.rows]
    s = result.summary
    controls = Controls(latents_tested=s["latents_tested"], significant_shared=s["significant_shared"],
                        shuffled_max_score_p95=s["shuffled_max_score_p95"],
                        stability_top10_overlap=s["stability_top10_overlap"], reuse_rate=s["reuse_rate"],
                        reuse_rate_shuffled=s["reuse_rate_shuffled"],
                        best_narrative_only=s["best_narrative_only"]["feature"],
                        best_assistant_only=s["best_assistant_only"]["feature"])
    return Found(persona=p.name, latents=latents, controls=controls, raw=result)


def steer_text(model: HookedModel, sae, latent: Latent | int, prompt: str, coefficient: float = 2.0, *,
               scale: float | None = None, mode: str = "add", positions: str = "all", max_new_tokens: int = 40,
               temperature: float = 0.0, seed: int = 0) -> str:
    """The model's reply to one user prompt with `latent` injected at `coefficient` x `scale` activation units
    (scale: a Latent's max activation on its persona's items, 1 for a bare index). Greedy unless `temperature`."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("prompt: must be a non-empty string")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens: must be positive, got {max_new_tokens}")
    if temperature < 0:
        raise ConfigError(f"temperature: must be >= 0, got {temperature}")
    index = latent.index if isinstance(latent, Latent) else latent
    if isinstance(index, bool) or not isinstance(index, int):
        raise ConfigError(f"latent={index!r}: expected a Latent or an int index")
    check_latent_index("latent", index, int(sae.cfg.d_sae), getattr(sae.cfg.metadata, "sae_id", None) or "")
    if scale is None:
        scale = latent.max_activation if isinstance(latent, Latent) else 1.0
    iv = Intervention(mode=mode, feature=index, scale=float(scale))
    return reply(model, sae, prompt, [iv], coefficient, max_new_tokens, temperature, seed, positions)
