"""Every config composes into typed dataclasses; bad overrides fail before any model loads."""

from pathlib import Path

import pytest

from psm_repro.__main__ import compose
from psm_repro.config import RunConfig

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parent.parent / "configs" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment):
    cfg, run_dir = compose("run", [f"experiment={experiment}"])
    assert isinstance(cfg, RunConfig)
    assert cfg.experiment_name == experiment
    assert (cfg.em.data if experiment.startswith("em_") else cfg.persona) in experiment
    assert experiment in str(run_dir)


def test_default_config_is_the_embedded_model_and_committed_sae():
    cfg, _ = compose("find", [])
    assert cfg.model.source == "embedded" and cfg.sae.path == "saes/smollm2_135m_l15_topk_v2"


@pytest.mark.parametrize("override, message", [
    ("model=nope", "model"),
    ("sae.d_in=-3", "sae.d_in"),
    ("finder.aggregaton=max", "aggregaton"),
    ("steer.mode=multiply", "steer.mode"),
    ("steer.max_new_tokens=ten", "max_new_tokens"),
    ("model.dtype=float8", "model.dtype"),
    ("model.n_devices=0", "model.n_devices"),
    ("sae.dtype=int8", "sae.dtype"),
    ("train_sae.b_dec_init=median", "train_sae.b_dec_init"),
    ("em.judge=vibes", "em.judge"),
    ("em.steer_samples_per_question=0", "em.steer_samples_per_question"),
])
def test_bad_overrides_fail_naming_the_key(override, message):
    with pytest.raises(Exception) as err:
        compose("run", [override])
    assert message in str(err.value)


def test_a_local_path_for_a_hub_model_config_is_used_not_ignored():
    cfg, _ = compose("run", ["model=gemma2_2b_it", "model.path=/models/gemma-2-2b-it"])
    assert cfg.model.source == "path" and cfg.model.path == "/models/gemma-2-2b-it"
    assert cfg.model.name == "gemma2_2b_it" and cfg.model.dtype == "bfloat16"  # the family's settings stay


def test_judge_and_llm_protocol_overrides_are_checked():
    with pytest.raises(Exception, match="judge.folds"):
        compose("judge", ["judge.folds=1"])
    with pytest.raises(Exception, match="llm_judge_protocol"):
        compose("run", ["steer.llm_judge_protocol=vibes"])
