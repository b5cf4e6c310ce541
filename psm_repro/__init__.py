"""psm_repro: re-run "persona feature" results on open language models with SAEs."""

__version__ = "0.1.0"
