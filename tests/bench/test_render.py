"""bench.md is rendered from bench.json alone: the committed tables regenerate byte for byte, and a ratio below
its target reads NO."""

import json
from pathlib import Path

import pytest
import torch

from psm_repro.bench.render import TARGETS, render

RESULTS = Path(__file__).parents[2] / "results" / "bench"


@pytest.mark.parametrize("run", ["", "h100", "gemma3_270m"])
def test_the_committed_bench_tables_regenerate_from_their_json(run):
    saved = RESULTS / run
    assert render(json.loads((saved / "bench.json").read_text())) == (saved / "bench.md").read_text()


def test_a_ratio_below_its_target_reads_no_and_at_it_reads_yes():
    r = json.loads((RESULTS / "bench.json").read_text())
    r["ratios"]["scan_vs_naive"] = TARGETS["scan_vs_naive"] - 0.01
    assert "| scan ratio vs naive | 1.99x | >= 2x | NO |" in render(r)
    r["ratios"]["scan_vs_naive"] = TARGETS["scan_vs_naive"]
    assert "| scan ratio vs naive | 2.00x | >= 2x | yes |" in render(r)


def test_the_unembedding_share_is_the_time_inside_the_output_projection(tiny_model):
    """A planted delay inside the output projection: the measured share is at least that delay's share of the
    run, and the parameter share is the head's weight over every matmul weight, counted by hand."""
    import time

    from psm_repro.bench.speed import unembedding_share

    head = tiny_model.model.get_output_embeddings()
    calls = []

    def run():  # one "generation": two head calls of 20 ms each, 40 ms elsewhere
        for _ in range(2):
            time.sleep(0.02)
            head(torch.zeros(1, head.weight.shape[1]))
            calls.append(1)

    slow = head.register_forward_hook(lambda m, a, o: time.sleep(0.02))
    try:
        u = unembedding_share(tiny_model, run, repeats=3)
    finally:
        slow.remove()
    assert len(calls) == 8  # a warm-up and three timed runs
    assert 0.4 <= u["share_median"] <= 0.6  # 2 x 20 ms of 80 ms
    params = dict(tiny_model.model.named_parameters())
    emb = tiny_model.model.get_input_embeddings().weight
    tied = head.weight is emb
    expected = sum(p.numel() for p in params.values()) - (0 if tied else emb.numel())
    assert u["matmul_params"] == expected and u["head_param_share"] == pytest.approx(head.weight.numel() / expected)
