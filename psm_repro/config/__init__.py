"""Typed configuration: the dataclasses Hydra validates every override against.

Hydra composes YAML from `configs/` onto these schemas (registered with ConfigStore by
psm_repro/cli/compose.py, the only place that imports Hydra), so a misspelled key or a wrong type fails before any
model loads.
Range and choice checks live in `__post_init__`, which runs when `OmegaConf.to_object` builds them
(OmegaConf 2.3 has no `Literal` support, so choices are plain strings checked there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from psm_repro.config.jobs import BenchConfig, CorpusConfig, EMConfig, JudgeConfig, PostTrainConfig, TrainSAEConfig
from psm_repro.config.sections import (ConfigError, DashboardConfig, FinderConfig, ModelConfig, PeersConfig, SAEConfig,
                                       SteerConfig, check_latent_index, check_seed)

__all__ = ["BenchConfig", "ConfigError", "CorpusConfig", "DashboardConfig", "EMConfig", "FinderConfig", "JudgeConfig",
           "ModelConfig", "PeersConfig", "PostTrainConfig", "RunConfig", "SAEConfig", "SteerConfig", "TrainSAEConfig"]


@dataclass
class RunConfig:
    """Everything one command needs."""

    command: str = "run"
    seed: int = 0
    persona: str = "secrecy"
    persona_file: str | None = None
    """Any persona file in the documented format; overrides `persona`."""
    experiment_name: str = "default"
    plan: bool = False
    """Print what the command would load and compute, then stop (nothing is loaded or downloaded)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    sae: SAEConfig = field(default_factory=lambda: SAEConfig(path="saes/smollm2_135m_l15_topk_v2"))
    finder: FinderConfig = field(default_factory=FinderConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    latent: int | None = None
    """`explain latent=<id>`: the latent to explain."""
    steer: SteerConfig = field(default_factory=SteerConfig)
    peers: PeersConfig = field(default_factory=PeersConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    train_sae: TrainSAEConfig = field(default_factory=TrainSAEConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    em: EMConfig = field(default_factory=EMConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    posttrain: PostTrainConfig = field(default_factory=PostTrainConfig)

    def __post_init__(self):
        check_seed("seed", self.seed)
        check_latent_index("latent", self.latent)
        self._check_label()

    def _check_label(self) -> None:
        """The run directory and the card are named by `experiment_name`: it may not name a shipped persona other
        than the one that runs (`run experiment=steer_secrecy persona=panic` would file panic under secrecy)."""
        if self.command == "finetune":  # the EM chain runs `em.persona`
            file, name, prefix = self.em.persona_file, self.em.persona, "em."
        elif self.command in PERSONA_COMMANDS:
            file, name, prefix = self.persona_file, self.persona, ""
        else:  # validate-judge runs `judge.personas`; the rest run no persona
            if self.command == "posttrain" and self.experiment_name == f"{self.command}_{self.persona}":
                self.experiment_name = "posttrain"  # the default label names a persona posttrain does not run
            return
        runs = Path(file).stem if file else name
        if self.experiment_name == f"{self.command}_{self.persona}":
            # configs/config.yaml's default label names `persona`, which persona_file (or em.persona) replaces: a
            # label derived from what runs is never refused, whatever the file is called (secrecy_v2.yaml)
            self.experiment_name = f"{self.command}_{runs}"
            return
        if re.search(rf"(?:^|_){re.escape(runs)}(?:_|$)", self.experiment_name):
            return  # the label names the persona that runs
        named = [p for p in shipped_persona_names()
                 if re.search(rf"(?:^|_){re.escape(p)}(?:_|$)", self.experiment_name)]
        if named:
            given = f"{prefix}persona_file={file}" if file else f"{prefix}persona={name}"
            fixed = re.sub(rf"(?:^|(?<=_)){re.escape(named[0])}(?=_|$)", runs, self.experiment_name, count=1)
            raise ConfigError(f"experiment_name={self.experiment_name}: names persona {named[0]} but {given} runs "
                              f"{runs}; set experiment_name too (e.g. experiment_name={fixed})")


PERSONA_COMMANDS = ("run", "find", "steer", "explain", "judge")
"""Commands that run `persona` / `persona_file` (and so are labelled by it)."""


def shipped_persona_names() -> list[str]:
    from psm_repro.core.paths import PROJECT_ROOT

    return sorted(p.stem for p in (PROJECT_ROOT / "experiments" / "personas").glob("*.yaml"))
