"""Bad input fails early, in one line naming the field or the file: what the config, the persona and the SAE's
cfg.json tell fails before the model loads; what needs the loaded SAE fails right after it loads, before any forward
pass (psm_repro/pipeline/jobs.py `run`, `steer_once`, psm_repro/pipeline/explain.py)."""

import json
import logging
import shutil

import pytest
import yaml
from conftest import write_persona

from psm_repro.cli import main
from psm_repro.pipeline import jobs


def _never(*args, **kwargs):
    raise AssertionError("the model was loaded")


def _no_forward(*args, **kwargs):
    raise AssertionError("a forward pass ran")


@pytest.fixture()
def no_model(monkeypatch):
    """Any model load fails the test: the check must come first."""
    from psm_repro.pipeline import explain

    monkeypatch.setattr(jobs, "load_model", _never)
    monkeypatch.setattr(explain, "load_model", _never)


@pytest.fixture()
def no_forward(monkeypatch):
    """The model loads, but any forward pass through it fails the test."""
    from transformers.models.llama import modeling_llama

    monkeypatch.setattr(modeling_llama.LlamaDecoderLayer, "forward", _no_forward)


@pytest.fixture()
def tiny(tiny_model_dir, tiny_sae_dir, tmp_path):
    persona = write_persona(tmp_path, n=12)
    return persona, ["model=hf_local", f"model.path={tiny_model_dir}", "model.device=cpu", "sae=local",
                     f"sae.path={tiny_sae_dir}", f"persona_file={persona}", "finder.n_permutations=200",
                     "finder.specificity=false", "dashboard.enabled=false", f"hydra.run.dir={tmp_path / 'run'}"]


@pytest.fixture(autouse=True)
def fresh_log_handler():
    """`main` sets up logging once per process (basicConfig), on the stderr of the test that called it first; give
    each test its own, so a warning logged before the error is captured here, not written to a closed stream."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = []
    yield
    root.handlers = saved


def _one_line(capsys) -> str:
    """The error: one line, no traceback (progress bars and log lines from before it aside)."""
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("psm_repro ")]
    assert len(lines) == 1 and ": error: " in lines[0] and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------- latent indices beyond the SAE

@pytest.mark.parametrize("command, override, needle", [
    ("run", "steer.feature=256", "steer.feature=256: out of range: the SAE local has 256 latents (0-255)"),
    ("steer", "steer.feature=70000", "steer.feature=70000: out of range: the SAE local has 256 latents (0-255)"),
    ("explain", "latent=256", "latent=256: out of range: the SAE local has 256 latents (0-255)"),
])
def test_a_latent_beyond_a_local_sae_fails_before_the_model_loads(tiny, no_model, capsys, command, override, needle):
    _, overrides = tiny
    assert main([command, *overrides, override]) == 1
    line = _one_line(capsys)
    assert needle in line and "the model was loaded" not in line, line


@pytest.mark.parametrize("command, override, needle", [
    ("run", "steer.feature=256", "steer.feature=256: out of range: the SAE local has 256 latents (0-255)"),
    ("steer", "steer.feature=300", "steer.feature=300: out of range: the SAE local has 256 latents (0-255)"),
    ("explain", "latent=999", "latent=999: out of range: the SAE local has 256 latents (0-255)"),
])
def test_a_latent_beyond_the_sae_fails_right_after_it_loads_before_any_forward(tiny, no_forward, monkeypatch,
                                                                               capsys, command, override, needle):
    """A registry SAE's width is known only once it loads (its cfg.json is not on disk before)."""
    from psm_repro.core.loading import SAEFacts
    from psm_repro.pipeline import explain

    for module in (jobs, explain):
        monkeypatch.setattr(module, "sae_facts_on_disk", lambda cfg: SAEFacts(None, None, None))
    _, overrides = tiny
    assert main([command, *overrides, override]) == 1
    line = _one_line(capsys)
    assert needle in line and "a forward pass ran" not in line, line


# --------------------------------------------------------------- items with nothing to measure

def test_a_narrative_of_special_tokens_only_fails_naming_file_and_item_before_any_forward(tiny, no_forward, capsys):
    path, overrides = tiny
    data = yaml.safe_load(path.read_text())
    data["search"]["narrative"][3] = "<|im_start|> <|im_end|>"  # markup the tokenizer knows, no text
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["find", *overrides]) == 1
    line = _one_line(capsys)
    assert f"{path}: search.narrative[3]: no measured tokens (the text encodes to special tokens only" in line, line


def test_a_narrative_shorter_than_the_saes_first_position_fails_before_any_forward(tiny, tiny_sae_dir, no_forward,
                                                                                   tmp_path, capsys):
    """The finder never reads positions before the SAE's first trained one (its `seqpos_slice`). The persona has
    situation sets, which `run` reads (forward passes) before the finder: the check must come before them."""
    _, overrides = tiny
    (tmp_path / "situated").mkdir()
    path = write_persona(tmp_path / "situated", situations=True)
    sae = tmp_path / "sae_from_2"
    shutil.copytree(tiny_sae_dir, sae)
    cfg = json.loads((sae / "cfg.json").read_text())
    cfg["metadata"]["seqpos_slice"] = [2, None]
    (sae / "cfg.json").write_text(json.dumps(cfg))
    data = yaml.safe_load(path.read_text())
    data["search"]["narrative_neutral"][5] = "secret"  # one token, at position 0
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["run", *[o for o in overrides if not o.startswith("sae.path")], f"sae.path={sae}",
                 f"persona_file={path}"]) == 1
    line = _one_line(capsys)
    assert (f"{path}: search.narrative_neutral[5]: no measured tokens (the text encodes to special tokens only, or "
            "to none at or after the SAE's first trained position 2)") in line, line


# --------------------------------------------------------------- the persona's eval set, before the model loads

def test_run_on_a_persona_without_eval_fails_before_the_model_loads(tmp_path, tiny, no_model, capsys):
    _, overrides = tiny
    (tmp_path / "bare").mkdir()
    bare = write_persona(tmp_path / "bare", with_eval=False)
    assert main(["run", *overrides, f"persona_file={bare}"]) == 1
    line = _one_line(capsys)
    assert f"{bare}: the persona has no 'eval' section, which `run` needs (use `find`)" in line, line


def test_run_on_a_persona_with_too_few_eval_prompts_fails_before_the_model_loads(tiny, no_model, capsys):
    path, overrides = tiny
    data = yaml.safe_load(path.read_text())
    del data["eval"]["prompts"][3:]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["run", *overrides]) == 1
    line = _one_line(capsys)
    assert "planted.yaml:" in line and "eval.prompts has 3 items, at least 4 required (eval prompts:" in line, line


def test_the_split_check_refuses_halves_without_statistics_and_warns_when_holm_cannot_pass(tmp_path, caplog):
    import dataclasses

    from psm_repro.config import SteerConfig
    from psm_repro.core.personas import load_persona
    from psm_repro.pipeline.sweep import check_split

    persona = load_persona(write_persona(tmp_path))  # 6 eval prompts
    cfg = SteerConfig(n_prompts=4)
    with caplog.at_level(logging.WARNING, logger="psm_repro.pipeline.sweep"):
        check_split(persona, cfg)
    assert "the test half has 2 eval prompts" in caplog.text and "needs 7 prompts a half, 14 in all" in caplog.text
    caplog.clear()
    many = dataclasses.replace(persona, prompts=[f"question {i} please ?" for i in range(14)])
    with caplog.at_level(logging.WARNING, logger="psm_repro.pipeline.sweep"):
        check_split(many, SteerConfig(n_prompts=14))
    assert not caplog.text  # 7 a half: Holm's smallest p is 4 / 2^7 < 0.05
    cfg.n_prompts = 3  # past the config's own check (a config edited after it was built)
    with pytest.raises(ValueError, match=r"planted\.yaml: eval\.prompts: 3 used \(steer\.n_prompts=3\), at least 4 "
                                         r"needed \(they alternate into a dev and a test half"):
        check_split(persona, cfg)
