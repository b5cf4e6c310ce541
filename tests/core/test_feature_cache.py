"""The feature cache and dashboards: a planted token detector reads as fully lexical, the streaming top-k and
counts equal a brute-force pass, and the cache is keyed by content (stale or corrupt caches are rebuilt)."""

import logging

import pytest
import torch
from conftest import save_tiny_sae, write_reference

from psm_repro.config import DashboardConfig, SAEConfig
from psm_repro.core import feature_cache
from psm_repro.core.feature_cache import ReferenceError, load_or_scan, reference_sequences
from psm_repro.core.loading import load_sae, sae_encode
from psm_repro.report import dashboard_pages, dashboards

HOOK = "blocks.1.hook_resid_post"
PLANTED = 0


def _cfg(reference, cache_dir, **kw) -> DashboardConfig:
    return DashboardConfig(reference=str(reference), cache_dir=str(cache_dir), context_size=32, top_k=20,
                           batch_size=4, **kw)


def _all_acts(model, sae, seqs):
    """(tokens, F) latents and token ids at every read position, one sequence at a time (the reference)."""
    rows, toks = [], []
    for s in seqs:
        ids = torch.tensor([s])
        rows.append(sae_encode(sae, model.activations(ids, torch.ones_like(ids), HOOK))[0].float())
        toks += s
    return torch.cat(rows), torch.tensor(toks)


@pytest.fixture(scope="module")
def planted(tiny_model, reference_dir, tmp_path_factory):
    """An SAE whose latent 0 fires exactly on the marker token of the reference corpus."""
    tmp = tmp_path_factory.mktemp("planted_cache")
    seqs = reference_sequences(_cfg(reference_dir, tmp), tiny_model.tokenizer, prepend_bos=False)
    marker = tiny_model.tokenizer.convert_tokens_to_ids("zorblax")
    acts = torch.cat([tiny_model.activations(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long), HOOK)[0]
                      for s in seqs])
    is_marker = torch.tensor([t for s in seqs for t in s]) == marker
    direction = acts[is_marker].mean(0) - acts[~is_marker].mean(0)
    direction /= direction.norm()
    lo, hi = (acts[~is_marker] @ direction).max(), (acts[is_marker] @ direction).min()
    assert hi > lo, "marker not linearly separable at this layer"
    torch.manual_seed(3)
    dec = torch.randn(64, 64)
    dec /= dec.norm(dim=-1, keepdim=True)
    W_enc, b_enc = dec.T * 0.5, torch.zeros(64)
    W_enc[:, PLANTED], b_enc[PLANTED], dec[PLANTED] = direction, -(lo + hi) / 2, direction
    path = save_tiny_sae(tmp / "sae", 64, 64, HOOK, W_enc=W_enc, b_enc=b_enc, W_dec=dec)
    sae = load_sae(SAEConfig(name="planted", path=str(path)), tiny_model)
    return sae, seqs, marker, int(is_marker.sum()), tmp


def test_a_planted_token_detector_reads_as_fully_lexical_and_its_dashboard_shows_the_token(tiny_model, planted,
                                                                                         reference_dir):
    sae, seqs, marker, n_marker, tmp = planted
    cache = load_or_scan(tiny_model, sae, "planted", _cfg(reference_dir, tmp / "c1"))
    lex, token, n = cache.lexicality(PLANTED)
    assert (lex, token, n) == (1.0, marker, min(20, n_marker))
    assert cache.fired_F[PLANTED] == n_marker
    assert cache.density_F[PLANTED] == pytest.approx(n_marker / sum(map(len, seqs)))
    board = dashboards.build(tiny_model, sae, cache, [PLANTED], n_contexts=5)[0]
    assert board.lexical_token == "zorblax" and len(board.contexts) == 5
    assert all(c.tokens[c.peak] == "zorblax" and c.value > 0 for c in board.contexts)
    # per-token highlighting: the latent is zero on every shown token but the marker
    assert all(a == 0 for c in board.contexts for t, a in zip(c.tokens, c.acts) if t != "zorblax")
    assert "[[zorblax]]" in dashboard_pages.markdown(board)
    assert "zorblax" in dashboard_pages.page(board)


def test_the_streaming_scan_equals_a_brute_force_pass(tiny_model, tiny_sae_dir, reference_dir, tmp_path):
    sae = load_sae(SAEConfig(name="tiny", path=str(save_tiny_sae(tmp_path / "s", 64, 48, HOOK, seed=5))),
                   tiny_model)
    cfg = _cfg(reference_dir, tmp_path)
    cache = load_or_scan(tiny_model, sae, "tiny", cfg)
    acts_NF, toks_N = _all_acts(tiny_model, sae, cache.seqs)
    assert cache.n_tokens == len(toks_N)
    assert torch.equal(cache.fired_F, (acts_NF > 0).sum(0))
    assert torch.equal(cache.hist_FB.sum(1), cache.fired_F)
    want = acts_NF.clamp(min=0).topk(cfg.top_k, dim=0).values
    assert torch.allclose(cache.top_values_KF, want, atol=1e-4)
    # the kept positions hold the kept values
    width = max(map(len, cache.seqs))
    for f in range(0, 48, 7):
        for k in range(3):
            if cache.top_values_KF[k, f] > 0:
                s, p = int(cache.top_seq_KF[k, f]), int(cache.top_pos_KF[k, f])
                flat = sum(len(x) for x in cache.seqs[:s]) + p
                assert p < width and acts_NF[flat, f] == pytest.approx(float(cache.top_values_KF[k, f]), abs=1e-4)


def test_the_cache_is_reused_and_rebuilt_when_stale_or_corrupt(tiny_model, planted, reference_dir, tmp_path,
                                                               monkeypatch, caplog):
    sae, *_ = planted
    cfg = _cfg(reference_dir, tmp_path / "cache")
    first = load_or_scan(tiny_model, sae, "same_name", cfg)
    path = feature_cache.cache_path(cfg, "same_name")
    scans = []
    real_scan = feature_cache.scan
    monkeypatch.setattr(feature_cache, "scan", lambda *a: scans.append(1) or real_scan(*a))
    again = load_or_scan(tiny_model, sae, "same_name", cfg)
    assert not scans and torch.equal(again.top_values_KF, first.top_values_KF)

    other = load_sae(SAEConfig(name="o", path=str(save_tiny_sae(tmp_path / "o", 64, 64, HOOK, seed=9))), tiny_model)
    with caplog.at_level(logging.INFO, logger="psm_repro.core.feature_cache"):
        rebuilt = load_or_scan(tiny_model, other, "same_name", cfg)  # another SAE under the same name
    assert scans == [1] and "stale (different sae)" in caplog.text
    assert not torch.equal(rebuilt.top_values_KF, first.top_values_KF)

    data = bytearray(path.read_bytes())
    data[-50] ^= 0xFF  # flip bits inside the tensors, leaving the header readable
    path.write_bytes(bytes(data))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="psm_repro.core.feature_cache"):
        load_or_scan(tiny_model, other, "same_name", cfg)
    assert scans == [1, 1] and "corrupt" in caplog.text

    path.write_bytes(b"garbage")
    assert feature_cache.load(path, {})[0] is None
    smaller = write_reference(tmp_path / "ref2", n=40, seed=1)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="psm_repro.core.feature_cache"):
        load_or_scan(tiny_model, other, "same_name", cfg)
        load_or_scan(tiny_model, other, "same_name", _cfg(smaller, tmp_path / "cache"))
    assert "stale (different sequences)" in caplog.text and len(scans) == 4


def test_a_missing_reference_corpus_is_one_line_naming_it(tiny_model, tmp_path):
    with pytest.raises(ReferenceError, match="dashboard.reference: .*nowhere"):
        reference_sequences(_cfg(tmp_path / "nowhere", tmp_path), tiny_model.tokenizer, prepend_bos=True)
