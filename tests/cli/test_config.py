"""Every config composes into typed dataclasses; bad overrides fail before any model loads."""

from pathlib import Path

import pytest

from psm_repro.cli import compose
from psm_repro.config import RunConfig

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[2] / "configs" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment):
    cfg, run_dir = compose("run", [f"experiment={experiment}"])
    assert isinstance(cfg, RunConfig)
    assert cfg.experiment_name == experiment
    if experiment.startswith("sae_"):  # an SAE's corpus and training, for one model: no persona runs
        assert cfg.model.name in experiment and cfg.train_sae.corpus == cfg.corpus.out_dir
    elif experiment.startswith("posttrain_"):  # post-training one model: no persona runs
        assert cfg.model.name in experiment and cfg.experiment_name == experiment
    else:
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
    ("posttrain.chats=0", "posttrain.chats"),
    ("posttrain.diff_items=4", "posttrain.diff_items"),
    ("posttrain.lr=-1", "posttrain.lr"),
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


# --------------------------------------------------------------- range checks: one line naming the field, no model

@pytest.mark.parametrize("override, needle", [
    # steering sweep: a non-zero coefficient, enough eval prompts and pairs for both halves, latent indices
    ("steer.coefficients=[0.0]", "steer.coefficients: needs a non-zero value, got [0.0] (0 is the unsteered"),
    ("steer.coefficients=[0,0]", "steer.coefficients: needs a non-zero value, got [0.0, 0.0]"),
    ("steer.n_prompts=3", "steer.n_prompts: must be >= 4, got 3 (eval prompts: they alternate into a dev and a test "
                          "half, and each half needs 2"),
    ("steer.n_pairs=1", "steer.n_pairs: must be >= 4, got 1 (eval pairs: they alternate"),
    ("steer.feature=-1", "steer.feature=-1: out of range: latent indices start at 0"),
    ("latent=-5", "latent=-5: out of range: latent indices start at 0"),
    # bootstrap counts: a 95% BCa interval needs resamples beyond both ends
    ("steer.n_bootstrap=99", "steer.n_bootstrap: must be >= 100, got 99 (a 95% BCa interval's ends are the "
                             "resamples' 2.5% and 97.5% quantiles"),
    ("dashboard.n_bootstrap=10", "dashboard.n_bootstrap: must be >= 100, got 10 (a 95% BCa"),
    ("em.n_bootstrap=0", "em.n_bootstrap: must be >= 100, got 0 (a 95% BCa"),
    ("em.n_permutations=10", "em.n_permutations: must be >= 100, got 10"),
    # seeds: numpy's range
    ("seed=-1", "seed: must be in [0, 2**32) (numpy's seed range), got -1"),
    ("seed=4294967296", "seed: must be in [0, 2**32) (numpy's seed range), got 4294967296"),
    # batch sizes, top-N and other counts in every section
    ("finder.batch_size=0", "finder.batch_size: must be positive, got 0"),
    ("finder.top_n=0", "finder.top_n: must be positive, got 0"),
    ("finder.min_active_items=0", "finder.min_active_items: must be positive, got 0"),
    ("finder.n_snippets=-1", "finder.n_snippets: must be >= 0, got -1"),
    ("dashboard.batch_size=0", "dashboard.batch_size: must be positive, got 0"),
    ("dashboard.top_n=-2", "dashboard.top_n: must be positive, got -2"),
    ("steer.samples_per_prompt=0", "steer.samples_per_prompt: must be positive, got 0"),
    ("steer.top_p=0", "steer.temperature must be >= 0 and steer.top_p in (0, 1]"),
    ("peers.samples=0", "peers.samples: must be positive, got 0"),
    ("judge.folds=1", "judge.folds: must be >= 2, got 1"),
    ("em.batch_size=0", "em.batch_size: must be positive, got 0"),
    ("em.diff_top_n=0", "em.diff_top_n: must be positive, got 0"),
    ("corpus.chunk_docs=0", "corpus.chunk_docs: must be positive, got 0"),
    ("train_sae.batch_sequences=0", "train_sae.batch_sequences: must be positive, got 0"),
    ("train_sae.b_dec_init_sequences=0", "train_sae.b_dec_init_sequences: must be positive, got 0"),
    ("train_sae.heldout_eval_sequences=0", "train_sae.heldout_eval_sequences: must be positive, got 0"),
    ("bench.scan_batch=0", "bench.scan_batch: must be positive, got 0"),
    ("bench.gen_batch=0", "bench.gen_batch: must be positive, got 0"),
    ("bench.repeats=0", "bench.repeats: must be positive, got 0"),
    ("bench.sweep_prompts=0", "bench.sweep_prompts: must be positive, got 0"),
])
def test_out_of_range_values_fail_in_one_line_before_any_model_loads(override, needle, monkeypatch, capsys):
    from psm_repro.cli import main
    from psm_repro.cli.compose import one_line
    from psm_repro.pipeline import jobs

    with pytest.raises(Exception) as err:
        compose("run", [override])
    assert needle in one_line(err.value) and "\n" not in one_line(err.value), one_line(err.value)

    def never(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(jobs, "load_model", never)
    assert main(["run", override]) == 1
    err_lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err_lines) == 1 and needle in err_lines[0] and "the model was loaded" not in err_lines[0]


def test_the_seed_range_is_the_whole_of_numpys():
    for seed in (0, 2 ** 32 - 1):
        cfg, _ = compose("run", [f"seed={seed}"])
        assert cfg.seed == seed


# --------------------------------------------------------------- experiment_name names the persona that runs

@pytest.mark.parametrize("overrides, needle", [
    (["experiment=steer_secrecy", "persona=panic"],
     "experiment_name=steer_secrecy: names persona secrecy but persona=panic runs panic; set experiment_name too "
     "(e.g. experiment_name=steer_panic)"),
    (["experiment=find_toxic_persona", "persona=ai_entity"], "experiment_name=find_toxic_persona: names persona "
                                                             "toxic_persona but persona=ai_entity runs ai_entity"),
    (["experiment=steer_secrecy", "persona_file=experiments/personas/peers/panic.json"],
     "experiment_name=steer_secrecy: names persona secrecy but persona_file=experiments/personas/peers/panic.json "
     "runs panic"),
    (["persona_file=experiments/personas/peers/panic.json", "experiment_name=import_toxic_persona_trait"],
     "experiment_name=import_toxic_persona_trait: names persona toxic_persona but"),
])
def test_a_run_labelled_with_another_persona_fails_before_any_model_loads(overrides, needle, monkeypatch, capsys):
    from psm_repro.cli import main
    from psm_repro.pipeline import jobs

    def never(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(jobs, "load_model", never)
    assert main(["run", *overrides]) == 1
    err_lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err_lines) == 1 and needle in err_lines[0], err_lines


def test_every_committed_run_and_make_target_keeps_a_legal_label():
    import json

    from psm_repro.config import RunConfig

    root = Path(__file__).parents[2]
    manifests = sorted((root / "results").glob("*/manifest.json"))
    assert {m.parent.name for m in manifests} >= {"import_toxic_persona_trait", "em_risky_finance", "steer_panic"}
    for path in manifests:
        c = json.loads(path.read_text())["config"]
        cfg = RunConfig(command=c["command"], persona=c["persona"], persona_file=c["persona_file"],
                        experiment_name=c["experiment_name"])
        assert cfg.experiment_name == c["experiment_name"] == path.parent.name
    # the Makefile's targets and the README's examples
    make = (root / "Makefile").read_text()
    for p in make.split("EXPERIMENTS := ", 1)[1].splitlines()[0].split():
        assert compose("run", [f"experiment=steer_{p}"])[0].experiment_name == f"steer_{p}"
    assert compose("finetune", ["experiment=em_risky_finance"])[0].experiment_name == "em_risky_finance"
    assert compose("find", ["persona=panic"])[0].experiment_name == "find_panic"


def test_finetune_is_labelled_by_the_persona_the_em_chain_runs():
    cfg, run_dir = compose("finetune", [])
    assert cfg.em.persona == "toxic_persona" and cfg.experiment_name == "finetune_toxic_persona"
    assert run_dir.parts[:2] == ("runs", "finetune_toxic_persona")
    assert compose("finetune", ["experiment=em_risky_finance"])[0].experiment_name == "em_risky_finance"
    with pytest.raises(Exception, match=r"experiment_name=em_secrecy: names persona secrecy but "
                                         r"em.persona=toxic_persona runs toxic_persona"):
        compose("finetune", ["experiment_name=em_secrecy"])


def test_a_persona_file_run_is_labelled_by_the_file_not_the_default_persona():
    cfg, run_dir = compose("find", ["persona_file=experiments/personas/peers/panic.json"])
    assert cfg.experiment_name == "find_panic"  # configs/config.yaml's ${command}_${persona} would say find_secrecy
    assert run_dir.parts[:2] == ("runs", "find_panic")  # and so does the run directory
    _, explicit = compose("find", ["persona_file=experiments/personas/peers/panic.json", "hydra.run.dir=out/x"])
    assert explicit == Path("out/x")


@pytest.mark.parametrize("stem", ["secrecy_v2", "sycophancy_caa", "my_panic"])
def test_a_persona_file_named_after_a_shipped_persona_runs_labelled_by_its_file(tmp_path, stem):
    """A file named after the trait it varies is the natural name: its derived label is never refused, and a label
    the user wrote that names the file's own persona is kept."""
    src = Path(__file__).parents[2] / "experiments" / "personas" / "secrecy.yaml"
    path = tmp_path / f"{stem}.yaml"
    path.write_text(src.read_text())
    cfg, run_dir = compose("find", [f"persona_file={path}"])
    assert cfg.experiment_name == f"find_{stem}" and run_dir.parts[:2] == ("runs", f"find_{stem}")
    assert compose("run", [f"persona_file={path}", f"experiment_name=steer_{stem}"])[0].experiment_name == \
        f"steer_{stem}"
    with pytest.raises(Exception, match=rf"names persona panic but persona_file={path} runs {stem}; set "
                                        rf"experiment_name too \(e.g. experiment_name=steer_{stem}\)"):
        compose("run", [f"persona_file={path}", "experiment_name=steer_panic"])
