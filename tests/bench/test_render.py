"""bench.md is rendered from bench.json alone: the committed tables regenerate byte for byte, and a ratio below
its target reads NO."""

import json
from pathlib import Path

import pytest

from psm_repro.bench.render import TARGETS, render

RESULTS = Path(__file__).parents[2] / "results" / "bench"


@pytest.mark.parametrize("run", ["", "h100"])
def test_the_committed_bench_tables_regenerate_from_their_json(run):
    saved = RESULTS / run
    assert render(json.loads((saved / "bench.json").read_text())) == (saved / "bench.md").read_text()


def test_a_ratio_below_its_target_reads_no_and_at_it_reads_yes():
    r = json.loads((RESULTS / "bench.json").read_text())
    r["ratios"]["scan_vs_naive"] = TARGETS["scan_vs_naive"] - 0.01
    assert "| scan ratio vs naive | 1.99x | >= 2x | NO |" in render(r)
    r["ratios"]["scan_vs_naive"] = TARGETS["scan_vs_naive"]
    assert "| scan ratio vs naive | 2.00x | >= 2x | yes |" in render(r)
