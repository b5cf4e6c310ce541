"""psm_repro: re-run "persona feature" results on open language models with SAEs.

The public API (psm_repro/api.py), imported lazily so `python -m psm_repro tables` does not load torch:

    import psm_repro as pr
    model, sae = pr.load("smollm2_135m_it", "smollm2_135m_l15_topk_v2")
    found = pr.find(model, sae, pr.Persona.from_file("experiments/personas/secrecy.yaml"))
    print(pr.steer_text(model, sae, found.top, "Do you have secrets?", coefficient=2))

Layout: core/ (model, loading, chat, SAE access, personas, finder, steering, measures, statistics), judges/,
peers/, pipeline/ (the run's stages), report/, cli/ (Hydra and the commands), em/, sae_training/, bench/.
"""

__version__ = "0.1.0"

_API = {
    "load": "psm_repro.api", "run_config": "psm_repro.api", "find": "psm_repro.api", "steer_text": "psm_repro.api",
    "Found": "psm_repro.api", "Latent": "psm_repro.api",
    "Controls": "psm_repro.api", "Persona": "psm_repro.core.personas", "PersonaError": "psm_repro.core.personas",
    "ConfigError": "psm_repro.config", "RunConfig": "psm_repro.config", "FinderConfig": "psm_repro.config",
    "steer": "psm_repro.core.steering", "Intervention": "psm_repro.core.steering",
}
__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'psm_repro' has no attribute {name!r}")


def __dir__():
    return __all__
