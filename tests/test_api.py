"""The public API at the package root (psm_repro/api.py): the README's example as written, typed results on the tiny
model checked against the finder's own rows and plain HF `generate`, and bad arguments as one line."""

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import write_persona

import psm_repro as pr

ROOT = Path(__file__).parents[1]


def _readme_section() -> str:
    return (ROOT / "README.md").read_text().split("## Use it as a library", 1)[1].split("\n## ", 1)[0]


def _readme_example() -> str:
    return re.search(r"```python\n(.*?)```", _readme_section(), re.S).group(1)


@pytest.mark.slow
def test_the_readme_example_runs_as_written(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    scope: dict = {}
    exec(compile(_readme_example(), "README.md", "exec"), scope)
    found, printed = scope["found"], capsys.readouterr().out.strip().splitlines()
    assert isinstance(found, pr.Found) and isinstance(found.top, pr.Latent)
    assert isinstance(found.table, pd.DataFrame) and found.table.iloc[0]["feature"] == found.top.index
    assert found.top.score >= found.latents[-1].score
    assert len(printed) == 2 and printed[1].strip()  # the latent line, then a non-empty steered reply
    assert found.top.index == int(re.search(r"finds latent (\d+)", _readme_section()).group(1))  # the prose's latent


@pytest.fixture(scope="module")
def loaded(tiny_model_dir, tiny_sae_dir):
    return pr.load("hf_local", "local", f"model.path={tiny_model_dir}", "model.device=cpu", f"sae.path={tiny_sae_dir}")


def test_load_takes_config_names_and_overrides(loaded, tiny_model_dir):
    model, sae = loaded
    assert model.name == "hf_local" and sae.cfg.d_in == model.d_model


def test_find_returns_typed_results_that_match_the_finders_rows(loaded, tmp_path):
    model, sae = loaded
    persona = pr.Persona.from_file(write_persona(tmp_path))
    found = pr.find(model, sae, persona, n_permutations=500)
    rows = found.raw.rows
    assert [x.index for x in found.latents] == [r["feature"] for r in rows]
    assert found.top.index == rows[0]["feature"] and found.top.rank == 1
    assert found.table["feature"].tolist() == [r["feature"] for r in rows]
    assert found.table["score"].is_monotonic_decreasing
    assert found.controls.shuffled_max_score_p95 == found.raw.summary["shuffled_max_score_p95"]
    assert found.controls.latents_tested == found.raw.summary["latents_tested"]
    assert int(found.top) == found.top.index


def test_find_ranks_on_the_situation_contrast_when_asked(loaded, tmp_path):
    model, sae = loaded
    persona = pr.Persona.from_file(write_persona(tmp_path, situations=True))
    found = pr.find(model, sae, persona, n_permutations=500, rank_by="narrative_situation",
                    situation_max_new_tokens=4, cache_dir=str(tmp_path / "cache"))
    assert found.raw.summary["ranked_on"] == "situation_prompt"
    with pytest.raises(pr.ConfigError, match="has no search.situation set"):
        pr.find(model, sae, pr.Persona.from_file(write_persona(tmp_path, name="plain")), rank_by="narrative_situation")


def _hf_greedy(model, prompt: str, n: int) -> str:
    from psm_repro.core.chat import encode_prompt

    ids = torch.tensor([encode_prompt(model.tokenizer, [{"role": "user", "content": prompt}])])
    out = model.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                               pad_token_id=model.tokenizer.pad_token_id or 0)
    return model.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def test_steer_text_at_zero_is_plain_greedy_generate_and_a_large_coefficient_changes_it(loaded):
    model, sae = loaded
    prompt = "the secret letter"
    assert pr.steer_text(model, sae, 3, prompt, coefficient=0.0, max_new_tokens=8) == _hf_greedy(model, prompt, 8)
    steered = {pr.steer_text(model, sae, f, prompt, coefficient=200.0, max_new_tokens=8) for f in range(4)}
    assert steered != {_hf_greedy(model, prompt, 8)}


def test_a_latent_applies_as_a_context_manager_at_its_max_activation_and_removes_its_hook(loaded, tmp_path):
    model, sae = loaded
    found = pr.find(model, sae, pr.Persona.from_file(write_persona(tmp_path)), n_permutations=500)
    top, hook = found.top, sae.cfg.metadata.hook_name
    ids = torch.tensor([[model.tokenizer.bos_token_id, 5, 6, 7]]).repeat(2, 1)
    base = model.activations(ids, torch.ones_like(ids), hook)
    with top.apply(model, sae, coefficient=2.0):
        steered = model.activations(ids, torch.ones_like(ids), hook)
    # a standard SAE writes W_dec[f] per unit: 2 x max activation x W_dec[f] on every non-special token, both rows
    torch.testing.assert_close(steered[:, 1:], base[:, 1:] + 2.0 * top.max_activation * sae.W_dec[top.index])
    torch.testing.assert_close(model.activations(ids, torch.ones_like(ids), hook), base)  # hook gone


@pytest.mark.parametrize("call, needle", [
    (lambda m, s: pr.find(m, s, "secrecy", n_permutation=5), "finder.n_permutation: no such option"),
    (lambda m, s: pr.find(m, s, "secrecy", n_permutations=5), "finder.n_permutations: must be >= 100"),
    (lambda m, s: pr.steer_text(m, s, s.cfg.d_sae, "hi"), "latent="),
    (lambda m, s: pr.steer_text(m, s, -1, "hi"), "latent=-1"),
    (lambda m, s: pr.steer_text(m, s, 0, "  "), "prompt: must be a non-empty string"),
    (lambda m, s: pr.steer_text(m, s, 0, "hi", max_new_tokens=0), "max_new_tokens: must be positive"),
    (lambda m, s: pr.steer_text(m, s, 0, "hi", mode="boost"), "steer.mode: unknown mode 'boost'"),
    (lambda m, s: pr.find(m, s, "no_such_persona"), "persona=no_such_persona: no file"),
    (lambda m, s: pr.find(m, s, "secrecy", seed=-1), "seed: must be in [0, 2**32)"),
])
def test_bad_arguments_fail_in_one_line_naming_the_argument(loaded, call, needle):
    with pytest.raises((pr.ConfigError, pr.PersonaError, ValueError)) as err:
        call(*loaded)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_bad_persona_file_fails_as_the_cli_says_it(tmp_path):
    path = write_persona(tmp_path)
    path.write_text(path.read_text().replace("narrative_neutral:", "narrative_neutrals:", 1))
    message = rf"^{re.escape(str(path))}:\d+: missing section 'search.narrative_neutral'"
    with pytest.raises(pr.PersonaError, match=message):
        pr.Persona.from_file(path)


def test_import_is_light_and_the_root_exports_the_api():
    code = "import sys, psm_repro as pr; print('torch' in sys.modules, sorted(pr.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False")
    for name in ("load", "find", "steer_text", "Persona", "Found", "Latent", "steer", "Intervention", "run_config"):
        assert name in out and callable(getattr(pr, name))
    with pytest.raises(AttributeError):
        pr.not_a_thing
