"""Every CLI command has a smoke test on the tiny model; errors are one line, never a traceback."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import dashboard_overrides, write_persona

from psm_repro.cli import main

ROOT = Path(__file__).parents[2]


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "psm_repro", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def test_no_command_prints_usage_and_fails():
    r = _cli()
    assert r.returncode != 0 and "usage: python -m psm_repro" in r.stderr


def test_unknown_command_prints_usage_and_fails():
    r = _cli("frobnicate")
    assert r.returncode != 0 and "unknown command 'frobnicate'" in r.stderr and "usage" in r.stderr


@pytest.mark.parametrize("override, needle", [
    ("model=nope", "model"), ("sae.d_in=-3", "sae.d_in"), ("steer.coefficent=3", "coefficent")])
def test_bad_override_is_one_line_without_traceback(override, needle):
    r = _cli("run", override)
    assert r.returncode != 0
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    assert needle in lines[0] and "Traceback" not in r.stderr


@pytest.fixture()
def tiny_overrides(tiny_model_dir, tiny_sae_dir, reference_dir, tmp_path):
    persona = write_persona(tmp_path, n=12, situations=True)
    others = tmp_path / "others"
    others.mkdir()
    for k in range(3):
        write_persona(others, name=f"other_{k}", n=12, seed=20 + k, with_eval=False)
    return ["model=hf_local", f"model.path={tiny_model_dir}", "model.device=cpu", "sae=local",
            f"sae.path={tiny_sae_dir}", f"persona_file={persona}", "finder.n_permutations=500",
            "finder.situation_max_new_tokens=6", f"finder.cache_dir={tmp_path / 'finder_cache'}",
            f"finder.specificity_dir={others}", *dashboard_overrides(reference_dir, tmp_path / "feature_cache")]


def test_find_writes_features_with_the_required_columns(tiny_overrides, tmp_path, capsys):
    out = tmp_path / "find_run"
    assert main(["find", *tiny_overrides, f"hydra.run.dir={out}"]) == 0
    with open(out / "features.csv") as fh:
        header = next(csv.reader(fh))
    for col in ["rank", "feature", "score", "narrative_effect", "assistant_effect", "narrative_p", "assistant_p",
                "max_activation", "top_tokens", "density", "lexicality", "lexical_token", "promoted_tokens"]:
        assert col in header
    assert (out / "summary.md").exists() and (out / "manifest.json").exists()
    # dashboards for the top 3 latents (dashboard.top_n=3), the overview figure, and the streetlight section
    assert len(list((out / "dashboards").glob("latent_*.html"))) == 3 == len(list((out / "dashboards").glob("*.md")))
    assert (out / "dashboards.png").stat().st_size > 10_000
    card = (out / "summary.md").read_text()
    assert "## What the top latents are" in card and "### Streetlight test" in card and "Verdict:" in card
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["streetlight"]["proxies"]) == {"lexicality", "log10_density", "context_consistency"}
    # the situation contrast at both read points, the model's own replies, and the specificity flags
    assert "## The assistant in the situation" in card and "situation d: prompt" in card
    assert summary["situation"]["n_pairs"] == 12 and len(summary["situation"]["latents"]) >= 1
    for row in summary["situation"]["latents"]:  # JSON booleans, not numpy's str() ("False" reads as true)
        for key in ("prompt_significant", "reply_significant", "situation_significant", "agree"):
            assert isinstance(row[key], bool), (key, row[key])
    replies = (out / "situation_replies.jsonl").read_text().splitlines()
    assert len(replies) == 2 * 12 * 2
    for col in ("situation_prompt_d", "situation_reply_d", "generic", "other_personas_passed"):
        assert col in header
    assert summary["specificity"]["others"] == ["other_0", "other_1", "other_2"]
    assert summary["finder"]["headline_feature"] is not None and "Headline latent" in card
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["versions"]["torch"] and manifest["data_files"]


def test_explain_writes_a_dashboard_for_any_latent_and_refuses_bad_ids(tiny_overrides, tmp_path, capsys):
    assert main(["explain", *tiny_overrides, "latent=5", f"hydra.run.dir={tmp_path / 'ex'}"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# Latent 5") and "Top contexts" in printed and "assistant trait" in printed
    assert (tmp_path / "ex" / "latent_5.html").exists() and (tmp_path / "ex" / "explain.md").exists()
    for i, (bad, needle) in enumerate((("latent=256", "latent=256: out of range"),
                                       ("latent=-1", "latent=-1: out of range"),
                                       ("dashboard.reference=/nowhere", "dashboard.reference: /nowhere"))):
        args = ["explain", *tiny_overrides, "latent=5", bad, f"hydra.run.dir={tmp_path / f'bad{i}'}"]
        assert main(args) == 1
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1
    assert main(["explain", *tiny_overrides, f"hydra.run.dir={tmp_path / 'none'}"]) == 1
    assert "latent: required" in capsys.readouterr().err


def test_ranking_by_situation_without_situation_sets_fails_before_the_model_loads(tiny_overrides, tmp_path, capsys):
    (tmp_path / "bare").mkdir()
    bare = write_persona(tmp_path / "bare", n=12)
    args = ["find", *tiny_overrides, f"persona_file={bare}", "finder.rank_by=narrative_situation",
            "model.path=/nonexistent/model", f"hydra.run.dir={tmp_path / 'r'}"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "finder.rank_by=narrative_situation" in err and "bare/planted.yaml has no search.situation" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "r").exists()


@pytest.mark.parametrize("where, words, needle", [
    ("prompts", 500, r"eval.prompts\[2\]: \d+ tokens \+ 40 new tokens is longer than the model's context of 512"),
    ("prompts", 470, r"eval.prompts\[2\]: \d+ tokens \+ 40 new tokens"),  # fits alone, not with its reply
    ("narrative", 600, r"search.narrative\[2\]: \d+ tokens is longer than the model's context of 512"),
])
def test_an_item_longer_than_the_context_is_refused_before_the_weights_load(tiny_overrides, tmp_path, capsys, where,
                                                                             words, needle):
    import yaml

    (tmp_path / "long").mkdir()
    path = write_persona(tmp_path / "long", n=12)
    data = yaml.safe_load(path.read_text())
    long = " ".join(["garden"] * words)  # one token per word in the fixture's vocabulary
    if where == "prompts":
        data["eval"]["prompts"][2] = long + " ?"
    else:
        data["search"]["narrative"][2] = long
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "r"
    assert main(["run", *tiny_overrides, f"persona_file={path}", f"hydra.run.dir={out}"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and re.search(needle, err), err
    assert "never cut" in err and not (out / "summary.json").exists()


def test_a_persona_without_situations_says_so_in_its_card(tiny_overrides, tmp_path):
    (tmp_path / "bare").mkdir()
    bare = write_persona(tmp_path / "bare", n=12)
    out = tmp_path / "bare_run"
    assert main(["find", *tiny_overrides, f"persona_file={bare}", "dashboard.enabled=false",
                 f"hydra.run.dir={out}"]) == 0
    assert "Not measured: planted.yaml has no search.situation set." in (out / "summary.md").read_text()
    assert not (out / "situation_replies.jsonl").exists()


def test_find_ranks_by_situation_when_asked(tiny_overrides, tmp_path):
    out = tmp_path / "sit"
    assert main(["find", *tiny_overrides, "finder.rank_by=narrative_situation", f"hydra.run.dir={out}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finder"]["ranked_on"] == "situation_prompt"
    assert "Ranked by `finder.rank_by=narrative_situation`" in (out / "summary.md").read_text()


def test_runs_never_overwrite_earlier_results(tiny_overrides, tmp_path, capsys):
    out = tmp_path / "once"
    assert main(["find", *tiny_overrides, f"hydra.run.dir={out}"]) == 0
    before = (out / "features.csv").read_bytes()
    assert main(["find", *tiny_overrides, f"hydra.run.dir={out}"]) == 1
    assert "already holds results" in capsys.readouterr().err
    assert (out / "features.csv").read_bytes() == before


def test_run_writes_a_full_result_card_and_is_reproducible(tiny_overrides, tmp_path, capsys):
    steer = ["steer.n_prompts=4", "steer.samples_per_prompt=1", "steer.max_new_tokens=6", "steer.n_bootstrap=200",
             "steer.coefficients=[0,4]"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["run", *tiny_overrides, *steer, f"hydra.run.dir={a}"]) == 0
    assert main(["run", *tiny_overrides, *steer, f"hydra.run.dir={b}"]) == 0
    for name in ("features.csv", "steering.csv", "samples.jsonl", "summary.md", "manifest.json", "dose_response.png"):
        assert (a / name).exists(), name
    assert (a / "steering.csv").read_bytes() == (b / "steering.csv").read_bytes()
    with open(a / "steering.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["method"] for r in rows} == {"unsteered", "system_prompt", "sae_latent", "random_latent",
                                           "dense_direction"}
    for col in ("method", "feature", "coefficient", "score", "score_ci_low", "score_ci_high", "trait_score",
                "trait_ci_low", "trait_ci_high", "coherence_score", "coherence_ci_low", "coherence_ci_high",
                "contrast_logprob", "judge_auroc", "judge_valid", "n"):
        assert col in rows[0]
    assert json.loads((a / "manifest.json").read_text())["chat_format"].endswith("system turns native")  # ChatML
    card = (a / "summary.md").read_text()
    assert "latent - random latent" in card
    # the planted persona has no labelled replies, so its judge is not validated and no cell may say "beats"
    assert "judge not valid" in card and "**beats**" not in card


def test_steer_prints_both_replies_side_by_side(tiny_overrides, capsys):
    assert main(["steer", *tiny_overrides, "steer.max_new_tokens=5", "steer.prompt=the secret ?"]) == 0
    out = capsys.readouterr().out
    assert "unsteered" in out and "steered (x" in out
    assert "neuronpedia" not in out  # the tiny SAE has no Neuronpedia id


def test_steer_prints_the_neuronpedia_link_when_the_sae_has_one(tiny_overrides, capsys):
    args = ["steer", *tiny_overrides, "steer.max_new_tokens=3", "steer.feature=7", "sae.neuronpedia_id=tiny/2-res"]
    assert main(args) == 0
    assert "latent 7 (https://www.neuronpedia.org/tiny/2-res/7)" in capsys.readouterr().out


def test_tables_regenerates_results_readme_byte_for_byte(capsys):
    readme = ROOT / "results" / "README.md"
    if not readme.exists():
        pytest.skip("no committed results yet")
    before = readme.read_bytes()
    assert main(["tables"]) == 0
    assert readme.read_bytes() == before


def test_bench_runs_on_the_tiny_model(tiny_overrides, tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["bench", *tiny_overrides, "bench.repeats=1", "bench.scan_repeats=1", "bench.n_texts=8", "bench.text_tokens=16",
            "bench.gen_batch=4", "bench.gen_tokens=4", "bench.sweep_coefficients=2", "bench.sweep_prompts=2",
            "bench.end_to_end=false", f"bench.out_dir={out}"]
    assert main(args) == 0
    md = (out / "bench.md").read_text()
    assert "scan ratio vs bare HF" in md and "steered / HF generate" in md
    ratios = json.loads((out / "bench.json").read_text())["ratios"]
    assert ratios["batched_sweep_speedup"] > 0 and ratios["sae_training_vs_scan"] > 0
    assert "SAE training / finder scan" in md


def test_multirun_sweeps_through_hydra_with_one_run_directory_each(tiny_model_dir, tiny_sae_dir, tmp_path, capsys):
    a = write_persona(tmp_path, name="alpha", seed=1)
    b = write_persona(tmp_path, name="beta", seed=2)
    args = ["-m", "find", "model=hf_local", f"model.path={tiny_model_dir}", "sae=local", f"sae.path={tiny_sae_dir}",
            "finder.n_permutations=200", f"persona_file={a},{b}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    assert main(args) == 0
    cards = sorted((tmp_path / "sweep").glob("*/features.csv"))
    assert len(cards) == 2


def test_parallel_finds_on_one_fresh_cache_agree_and_leave_valid_caches(tiny_overrides, tmp_path, monkeypatch):
    """Three `find` jobs at once through the shipped joblib launcher, sharing one fresh cache: the feature cache,
    the situation replies and the specificity scores are each written once and read by the others, and every run
    gets the card a lone run gets."""
    import numpy as np
    from safetensors import safe_open

    monkeypatch.setenv("PSM_REPRO_CACHE", str(tmp_path / "fresh_cache"))
    sweep = tmp_path / "sweep"
    args = ["-m", "find", *tiny_overrides, "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=3",
            "experiment_name=par_a,par_b,par_c", f"hydra.sweep.dir={sweep}"]
    assert main(args) == 0
    cards = sorted(sweep.glob("*/features.csv"))
    assert len(cards) == 3 and len({c.read_text() for c in cards}) == 1  # the same seed, the same table
    lone = tmp_path / "lone"
    assert main(["find", *tiny_overrides, f"hydra.run.dir={lone}"]) == 0
    assert (lone / "features.csv").read_text() == cards[0].read_text()
    caches = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".") and
              p.suffix in (".safetensors", ".json", ".npz") and "cache" in str(p.relative_to(tmp_path))]
    kinds = {p.suffix for p in caches}
    assert {".safetensors", ".json", ".npz"} <= kinds, caches
    for p in caches:  # each one complete and readable
        if p.suffix == ".safetensors":
            with safe_open(str(p), "pt") as fh:
                assert fh.keys()
        elif p.suffix == ".json":
            assert json.loads(p.read_text())
        else:
            with np.load(p) as z:
                assert z["score"].shape == z["q"].shape
    assert not [p for p in tmp_path.rglob("*.tmp*")]  # no half-written entry left behind


def test_runs_killed_at_each_stage_leave_caches_that_rerun_to_the_uninterrupted_card(tiny_overrides, tmp_path):
    """SIGKILL while the model loads, during the finder and specificity check (situation replies already
    cached), and during the feature-cache scan, one after another on one cache; the run after the last kill must give, byte for byte, the card of a run that was
    never interrupted (on a cache of its own)."""
    import os
    import signal

    def args(run_dir, cache):
        keep = [a for a in tiny_overrides if not a.startswith(("finder.cache_dir=", "dashboard.cache_dir="))]
        return [sys.executable, "-m", "psm_repro", "find", *keep, f"finder.cache_dir={cache / 'finder'}",
                f"dashboard.cache_dir={cache / 'features'}", f"hydra.run.dir={run_dir}"]

    def env(cache):
        return {**os.environ, "PSM_REPRO_CACHE": str(cache / "root")}

    def killed_at(pattern, run_dir, cache):
        """Start a run and SIGKILL it the moment its log prints `pattern` (the stage after it is under way)."""
        proc = subprocess.Popen(args(run_dir, cache), stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env(cache))
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if re.search(pattern, line):
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=120)
        assert proc.returncode == -signal.SIGKILL, "".join(seen[-5:])  # killed, not finished

    clean = tmp_path / "clean"
    r = subprocess.run(args(tmp_path / "clean_run", clean), capture_output=True, text=True, cwd=ROOT, env=env(clean))
    assert r.returncode == 0, r.stderr[-500:]
    cache = tmp_path / "killed"
    for k, pattern in enumerate(("Loading weights|loading", r"situations read", r"feature cache .*scanning")):
        killed_at(pattern, tmp_path / f"killed_{k}", cache)
    final = tmp_path / "after_kills"
    r = subprocess.run(args(final, cache), capture_output=True, text=True, cwd=ROOT, env=env(cache))
    assert r.returncode == 0, r.stderr[-500:]
    for name in ("features.csv", "situation_replies.jsonl", "summary.md"):
        assert (final / name).read_bytes() == (tmp_path / "clean_run" / name).read_bytes(), name


def test_plan_prints_what_would_run_without_loading_anything(capsys):
    # a registry SAE and a hub model: nothing may be downloaded (tests are offline), so this only works
    # if plan=true really loads nothing
    assert main(["run", "experiment=steer_panic", "model=gemma2_2b_it", "sae=gemmascope_2b_res_l12_16k",
                 "plan=true"]) == 0
    out = capsys.readouterr().out
    assert "google/gemma-2-2b-it" in out and "blocks.12.hook_resid_post" in out and "generated tokens" in out
    assert "not on this machine yet" in out  # a hub model that is not cached: nothing fetched
    # panic has peer data: 2 + 5 methods x 3 coefficients, 32 prompts
    assert "persona vector, CAA vector" in out and "544 generated replies" in out and "52 held-out items" in out


def test_posttrain_plan_lists_the_chain_not_a_persona(capsys):
    assert main(["posttrain", "experiment=posttrain_gemma3_270m", "plan=true"]) == 0
    out = capsys.readouterr().out
    assert "480 chats of corpus/smollm2_135m" in out and "= 60 steps" in out and "top 50 risers" in out
    assert "persona " not in out and "finder " not in out
