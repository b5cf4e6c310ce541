"""The command line: argument handling, Hydra composition and the commands (`python -m psm_repro`)."""

from psm_repro.cli.commands import main
from psm_repro.cli.compose import compose

__all__ = ["compose", "main"]
