"""The streetlight test on hand-built cases: group membership, proxies and the shuffled-label control."""

import numpy as np
import pytest
import torch

from psm_repro.core.feature_cache import HIST_EDGES, FeatureCache
from psm_repro.pipeline.streetlight import compare, consistency, streetlight


def test_the_shuffled_control_is_the_exact_permutation_p_value():
    # 6 values split 3/3: of the 20 splits, 2 reach |diff| = 1, so the two-sided p is 2/20
    out = compare(np.array([1.0, 1, 1]), np.array([0.0, 0, 0]), n_resamples=1000, seed=0)
    assert out["diff"] == 1.0 and out["p_shuffled"] == pytest.approx(0.1)
    # null: -1 (1 split), -1/3 (9), 1/3 (9), 1 (1); its 2.5% point interpolates between the 1st and 2nd values
    assert out["null_low"] == pytest.approx(-1 + 0.475 * 2 / 3) and out["null_high"] == pytest.approx(1 - 0.475 * 2 / 3)


def test_a_real_difference_has_an_interval_away_from_zero_and_chance_does_not():
    rng = np.random.default_rng(0)
    shifted = compare(rng.normal(1.0, 1, 80), rng.normal(0.0, 1, 80), n_resamples=2000, seed=0)
    assert 0.5 < shifted["diff"] < 1.5 and shifted["ci_low"] > 0 and shifted["p_shuffled"] < 0.01
    assert shifted["null_low"] < 0 < shifted["null_high"] < shifted["diff"]
    same = compare(rng.normal(0, 1, 80), rng.normal(0, 1, 80), n_resamples=2000, seed=0)
    assert same["ci_low"] < 0 < same["ci_high"] and same["p_shuffled"] > 0.05
    few = compare(np.array([1.0, 2.0]), np.array([0.0, 1.0, 2.0]), n_resamples=200, seed=0)
    assert np.isnan(few["p_shuffled"])  # too few latents in a group: no test


def test_consistency_is_the_mean_off_diagonal_cosine():
    vecs = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0]), "c": np.array([0.6, 0.8])}
    enc = lambda texts: np.stack([vecs[t] for t in texts])  # noqa: E731
    # pairs: a.b = 0, a.c = 0.6, b.c = 0.8 -> mean 1.4 / 3
    assert consistency(["a", "b", "c"], enc) == pytest.approx(1.4 / 3)
    assert np.isnan(consistency(["a"], enc))


class _Tok:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


def test_groups_and_proxies_come_from_the_significance_masks():
    # 6 latents, 4 kept activations each; latent f's kept tokens: f in {0, 1, 2} all token 7 (lexical),
    # f in {3, 4, 5} four different tokens
    seqs = [[7, 7, 7, 7], [1, 2, 3, 4]]
    top_seq = torch.tensor([[0, 0, 0, 1, 1, 1]] * 4)
    top_pos = torch.arange(4)[:, None].expand(4, 6).clone()
    cache = FeatureCache(seqs, torch.ones(4, 6), top_seq, top_pos, torch.tensor([8, 8, 8, 80, 80, 80]),
                         torch.zeros(6, 70, dtype=torch.int64), 800, {})
    sig_a = np.array([True, True, True, True, True, True])
    sig_n = np.array([True, True, True, False, False, False])
    enc = lambda texts: np.ones((len(texts), 2)) / np.sqrt(2)  # noqa: E731
    out = streetlight(cache, sig_a, sig_n, _Tok(), enc, n_contexts=4, max_latents=10, n_resamples=200, seed=0)
    assert (out["n_reused"], out["n_assistant_only"]) == (3, 3)
    lex, dens = out["proxies"]["lexicality"], out["proxies"]["log10_density"]
    assert (lex["mean_a"], lex["mean_b"]) == (1.0, 0.25)
    assert dens["mean_a"] == pytest.approx(np.log10(0.01)) and dens["mean_b"] == pytest.approx(np.log10(0.1))
    assert out["proxies"]["context_consistency"]["mean_a"] == pytest.approx(1.0)


def test_lexicality_and_quantiles_on_a_hand_built_cache():
    # latent 0 kept 4 activations on tokens 7, 7, 7, 1 (and one empty slot); latent 1 none
    seqs = [[7, 7, 7, 1]]
    top_values = torch.tensor([[5.0, 0.0], [4.0, 0.0], [3.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    top_pos = torch.tensor([[0, 0], [1, 0], [2, 0], [3, 0], [0, 0]])
    hist = torch.zeros(2, len(HIST_EDGES) - 1, dtype=torch.int64)
    hist[0, 30], hist[0, 40] = 10, 10  # half the positive values in bin 30, half in bin 40
    cache = FeatureCache(seqs, top_values, torch.zeros(5, 2, dtype=torch.int64), top_pos, torch.tensor([20, 0]),
                         hist, 100, {})
    assert cache.lexicality(0) == (0.75, 7, 4)
    assert np.isnan(cache.lexicality(1)[0]) and cache.lexicality(1)[2] == 0
    p50, p90 = cache.quantiles(0, (0.5, 0.9))
    assert p50 == pytest.approx(float(HIST_EDGES[31])) and p90 == pytest.approx(float(HIST_EDGES[41]))
    assert cache.density_F.tolist() == [0.2, 0.0]
