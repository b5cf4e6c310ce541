"""The installable package: build the wheel from the tracked sources, check what it holds, install it apart from
the checkout and use it from an empty directory (offline: no build isolation, no dependencies fetched)."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from psm_repro.config import DashboardConfig

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.slow


def _default_sae_dir() -> str:
    defaults = yaml.safe_load((ROOT / "configs" / "config.yaml").read_text())["defaults"]
    name = next(d["sae"] for d in defaults if isinstance(d, dict) and "sae" in d)
    return yaml.safe_load((ROOT / "configs" / "sae" / f"{name}.yaml").read_text())["path"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src, dist = tmp / "src", tmp / "dist"
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True)
    for rel in filter(None, tracked.stdout.split("\0")):
        if (ROOT / rel).is_file() and not rel.startswith(("tests/", "results/", "runs/", "scripts/", "docs/")):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes((ROOT / rel).read_bytes())
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist)], check=True, capture_output=True, text=True)
    return next(dist.glob("psm_repro-*.whl"))


def test_the_wheel_holds_every_module_and_the_data_a_run_needs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "psm_repro").rglob("*.py")}
    assert modules and modules <= names, sorted(modules - names)
    data = "psm_repro/_data/"
    shipped = [str(p.relative_to(ROOT)) for top in ("configs", "experiments") for p in (ROOT / top).rglob("*")
               if p.is_file() and "__pycache__" not in p.parts]
    assert any(s.startswith("experiments/em/") for s in shipped) and any("judge_sets" in s for s in shipped)
    assert {data + s for s in shipped} <= names, sorted({data + s for s in shipped} - names)[:5]
    sae = _default_sae_dir()
    assert {f"{data}{sae}/cfg.json", f"{data}{sae}/sae_weights.safetensors"} <= names
    reference = DashboardConfig().reference
    corpus = {str(p.relative_to(ROOT)) for p in (ROOT / reference).iterdir()}
    assert {data + c for c in corpus} <= names and f"{data}{reference}/manifest.json" in names
    assert not any(n.startswith(("tests/", "results/", "runs/", f"{data}results", f"{data}runs")) for n in names)


def test_the_installed_wheel_runs_from_an_empty_directory(wheel, tmp_path):
    site, empty = tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    code = ("import psm_repro as pr; from psm_repro.core import paths; print(pr.__file__); print(paths.installed()); "
            "p = pr.Persona.shipped('secrecy'); print(p.path); cfg = pr.run_config('experiment=steer_secrecy'); "
            "print(cfg.experiment_name); print(paths.output_path('results/bench'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=empty, env=env, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0].startswith(str(site)) and lines[1] == "True"
    assert lines[2] == str(site / "psm_repro" / "_data" / "experiments" / "personas" / "secrecy.yaml")
    assert lines[3] == "steer_secrecy"
    assert lines[4] == str(empty / "results" / "bench")  # outputs go under the working directory, not site-packages
    plan = subprocess.run([sys.executable, "-m", "psm_repro", "run", "experiment=steer_secrecy", "plan=true"],
                          cwd=empty, env=env, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    assert "persona   secrecy" in plan.stdout and f"disk {_default_sae_dir()}" in plan.stdout
    assert list(empty.iterdir()) == []  # a plan writes nothing
