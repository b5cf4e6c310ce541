"""Offline check of every registry SAE config against sae-lens's bundled pretrained-SAE directory."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[2]
SAE_CONFIGS = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "configs" / "sae").glob("*.yaml")}
MODEL_CONFIGS = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "configs" / "model").glob("*.yaml")}
REGISTRY = sorted(k for k, v in SAE_CONFIGS.items() if v.get("release") not in (None, "???"))


def _norm(model_id: str) -> str:
    name = model_id.split("/")[-1].lower()
    return {"gpt2": "gpt2-small"}.get(name, name)


@pytest.fixture(scope="module")
def directory():
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()  # the YAML shipped inside sae-lens: no download


def test_there_are_registry_configs_for_every_required_family():
    models = set(MODEL_CONFIGS)
    assert {"gemma2_2b", "gemma2_2b_it", "gemma2_9b_it", "gemma3_1b_it", "gpt2_small", "llama31_8b_it"} <= models
    assert len(REGISTRY) >= 6


@pytest.mark.parametrize("name", REGISTRY)
def test_release_and_id_exist_and_the_model_matches(name, directory):
    cfg = SAE_CONFIGS[name]
    assert cfg["release"] in directory, f"{name}: release {cfg['release']} not in sae-lens's registry"
    release = directory[cfg["release"]]
    assert cfg["sae_id"] in release.saes_map, f"{name}: {cfg['sae_id']} not in {cfg['release']}"
    assert cfg["for_models"], f"{name}: for_models is empty"
    for model in cfg["for_models"]:
        hf_id = MODEL_CONFIGS[model].get("hf_id") or MODEL_CONFIGS[model]["upstream"]  # embedded: its source
        # Gemma Scope 2B pt SAEs are routinely used on the -it model too: compare without the -it suffix
        assert _norm(release.model).removesuffix("-it") == _norm(hf_id).removesuffix("-it"), (
            f"{name}: release model {release.model} vs model config {model} ({hf_id})")
