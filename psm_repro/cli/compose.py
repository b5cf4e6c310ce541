"""Hydra at the edge: compose `configs/` (the checkout's or the installed wheel's copy) onto the typed dataclasses,
for one run or a multirun sweep, and turn Hydra's errors into one line. Nothing below the CLI imports Hydra."""

from __future__ import annotations

import sys
from pathlib import Path

from psm_repro.core.paths import PROJECT_ROOT

CONFIG_DIR = str(PROJECT_ROOT / "configs")


def register_configs() -> None:
    """Register the schemas so YAML files and overrides are type-checked against them."""
    from hydra.core.config_store import ConfigStore

    from psm_repro.config import ModelConfig, RunConfig, SAEConfig

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="sae", name="sae_schema", node=SAEConfig)


def compose(command: str, overrides: list[str]):
    """Compose and validate the config for `command`; returns (RunConfig, run directory)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides + [f"command={command}"],
                            return_hydra_config=True)
    run_dir = Path(cfg.hydra.run.dir)
    label = cfg.experiment_name
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra")
    typed = OmegaConf.to_object(cfg)
    if typed.experiment_name != label:  # a persona_file run relabelled by its file (RunConfig._check_label)
        run_dir = Path(*[typed.experiment_name if part == label else part for part in run_dir.parts])
    return typed, run_dir


def multirun(command: str, overrides: list[str], dispatch) -> int:
    """Hand the sweep to Hydra's own multirun machinery (sweeper + launcher plugins)."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    register_configs()

    @hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
    def task(cfg) -> None:
        dispatch(command, OmegaConf.to_object(cfg), Path(HydraConfig.get().runtime.output_dir))

    saved = sys.argv
    sys.argv = [saved[0], "--multirun", *overrides, f"command={command}"]
    try:
        task()
    finally:
        sys.argv = saved
    return 0


def one_line(err: Exception) -> str:
    """The message a user needs, on one line: Hydra's own text plus the cause that names the key."""
    lines = [x.strip() for x in str(err).strip().splitlines() if x.strip()]
    text = lines[0] if lines else type(err).__name__
    if "Available options in" in str(err):  # an unknown config group option: list the real ones
        idx = next(i for i, x in enumerate(lines) if x.startswith("Available options in"))
        options = [x for x in lines[idx + 1:] if not x.startswith(("Config search path", "provider="))
                   and not x.endswith("_schema")]
        options = options[: options.index("Config search path:")] if "Config search path:" in options else options
        text += f" (available: {', '.join(options)})"
    cause = err.__cause__
    if cause is not None:
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        if first and first not in text:
            text = text.rstrip(".") + f": {first}"
    return text
