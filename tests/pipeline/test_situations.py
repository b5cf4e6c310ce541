"""Situation sets on a planted case, the reply cache, the d_z interval, and specificity (generic latents).

Latent SCRIPTED fires on the marker the scripted replies and trait narratives hold ("zorblax"); latent
SITUATION fires on the word the situation user turns and trait narratives hold ("panic"). Ranking by the
scripted contrast must find the first; ranking by the situation contrast must find the second and not the first.
"""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import SITUATION_MARKER, plant_token_sae, write_persona
from scipy import stats as sps

from psm_repro.config import FinderConfig, SAEConfig
from psm_repro.core import sampling
from psm_repro.core.finder import encode_persona, find_features
from psm_repro.core.loading import load_sae
from psm_repro.core.personas import load_persona
from psm_repro.pipeline import situations
from psm_repro.pipeline.specificity import specificity

HOOK = "blocks.0.hook_resid_post"
SCRIPTED, SITUATION = 0, 1
CFG = FinderConfig(n_permutations=20000, top_n=20, batch_size=8, situation_max_new_tokens=6, specificity=False)


@pytest.fixture(scope="module")
def planted(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("situations")
    persona = load_persona(write_persona(tmp, n=16, situations=True, system=True))
    tok = tiny_model.tokenizer
    seqs = [e.ids for items in encode_persona(tiny_model, persona, prepend_bos=False).values() for e in items]
    seqs += [situations.prompt_item(tok, c, 0).ids for c in persona.situation + persona.situation_neutral]
    ids = {SCRIPTED: tok.convert_tokens_to_ids("zorblax"), SITUATION: tok.convert_tokens_to_ids(SITUATION_MARKER)}
    sae = load_sae(SAEConfig(name="planted", path=str(plant_token_sae(tiny_model, tmp / "sae", seqs, ids, HOOK))),
                   tiny_model)
    read = situations.read_situations(tiny_model, sae, persona, CFG, 0, 0, tmp / "replies")
    return persona, sae, read, tmp


def test_the_situation_ranking_finds_the_situation_latent_and_not_the_scripted_one(tiny_model, planted):
    persona, sae, read, _ = planted
    scripted = find_features(tiny_model, sae, persona, CFG, seed=0, situation=read.acts)
    assert scripted.rows[0]["feature"] == SCRIPTED and scripted.rows[0]["significant"]
    ranked = find_features(tiny_model, sae, persona, dataclasses.replace(CFG, rank_by="narrative_situation"),
                           seed=0, situation=read.acts)
    top = ranked.rows[0]
    assert top["feature"] == SITUATION and top["significant"]
    assert top["score"] > ranked.summary["shuffled_max_score_p95"]
    assert ranked.summary["ranked_on"] == "situation_prompt"
    assert SCRIPTED not in [r["feature"] for r in ranked.rows if r["significant"]]
    # the scripted-reply column still reports the scripted contrast, on which the situation latent is silent
    assert top["assistant_effect"] < 0.5 < scripted.rows[0]["assistant_effect"]


def test_the_card_section_reports_both_reads_and_the_disagreement(tiny_model, planted):
    persona, sae, read, _ = planted
    found = find_features(tiny_model, sae, persona, CFG, seed=0, situation=read.acts)
    sec = situations.section(read, found, CFG, seed=0, n_resamples=500)
    rows = {r["feature"]: r for r in sec["latents"]}
    assert rows[SCRIPTED]["scripted_significant"] and not rows[SCRIPTED]["prompt_significant"]
    assert not rows[SCRIPTED]["agree"] and SCRIPTED in sec["disagree"]
    # ranked by the situation, the situation latent heads the list, passes at the prompt, not on scripted replies
    ranked = find_features(tiny_model, sae, persona, dataclasses.replace(CFG, rank_by="narrative_situation"),
                           seed=0, situation=read.acts)
    top = situations.section(read, ranked, CFG, seed=0, n_resamples=500)["latents"][0]
    assert top["feature"] == SITUATION and top["group"] == "shared #1"
    assert top["prompt_significant"] and top["situation_significant"] and not top["scripted_significant"]
    assert not top["agree"]
    assert sec["n_pairs"] == 16 and sec["samples"] == CFG.situation_samples
    assert len(read.replies) == 2 * 16 * CFG.situation_samples
    # the situation latent's prompt effect, against scipy: paired d_z on the planted activations
    a, b = read.acts["situation_prompt"].latents_NF, read.acts["situation_prompt_neutral"].latents_NF
    diff = (a - b)[:, SITUATION].numpy()
    c = situations.contrast(read.acts["situation_prompt"], read.acts["situation_prompt_neutral"], CFG, 0)
    d_z = diff.mean() / max(diff.std(ddof=1), 1e-3 + 0.05 * np.abs(diff).max())  # d_z, SD floored (core/stats.py)
    assert float(c.effect_F[SITUATION]) == pytest.approx(d_z, rel=1e-4)
    assert c.q_F[SITUATION] < 0.05 and bool(c.tested_F[SITUATION]) and not bool(c.tested_F[SCRIPTED])


def test_prompt_items_measure_the_items_own_text_and_the_generation_header(tiny_model):
    tok = tiny_model.tokenizer
    # the fixture template adds "You are a helpful assistant." as a default system turn: not the item's text
    e = situations.prompt_item(tok, [{"role": "user", "content": "hello you"}], first_position=1)
    kept = [tok.decode([t]).strip() for t, m in zip(e.ids, e.mask) if m]
    assert [k for k in kept if k] == ["hello", "you", "assistant"], kept
    assert "helpful" in tok.decode(e.ids)
    own = situations.prompt_item(tok, [{"role": "system", "content": "You are helpful ."},
                                      {"role": "user", "content": "hello you"}], first_position=0)
    kept = [tok.decode([t]).strip() for t, m in zip(own.ids, own.mask) if m]
    assert [k for k in kept if k] == ["You", "are", "helpful", ".", "hello", "you", "assistant"], kept
    assert not any(m for t, m in zip(own.ids, own.mask) if t in set(tok.all_special_ids))
    r = situations.reply_item([5, 6, 7], [8, 9])
    assert r.ids == [5, 6, 7, 8, 9] and r.mask == [False, False, False, True, True]


def test_replies_are_cached_by_content_and_resampled_when_anything_changes(tiny_model, planted):
    persona, sae, read, tmp = planted
    again = situations.read_situations(tiny_model, sae, persona, CFG, 0, 0, tmp / "replies")
    assert again.cached and again.replies == read.replies
    other = situations.read_situations(tiny_model, sae, persona, CFG, 1, 0, tmp / "replies")
    assert not other.cached and other.seed == read.seed + 1
    longer = situations.read_situations(tiny_model, sae, persona, dataclasses.replace(CFG, situation_samples=3), 0, 0,
                                        tmp / "replies")
    assert not longer.cached and len(longer.replies) == 2 * 16 * 3


def test_each_pair_is_read_on_the_reply_to_its_own_prompt(tiny_model, planted, tmp_path, monkeypatch):
    """A stand-in for `generate` that echoes each prompt's user words, numbered by sample: the record and the
    measured reply tokens for (set, item, sample) must be that item's words (the random tiny model writes
    much the same text for every prompt, so its own replies cannot tell the items apart)."""
    persona, sae, _, _ = planted
    tok = tiny_model.tokenizer
    special = set(tok.all_special_ids)

    def echo(model, prompts, max_new_tokens, temperature, seed, top_p=None):
        calls.append(len(prompts))
        return [[t for t in p if t not in special][-6:-2] for p in prompts], 0

    calls: list[int] = []
    monkeypatch.setattr(sampling, "generate", echo)
    cfg = dataclasses.replace(CFG, situation_samples=3)
    read = situations.read_situations(tiny_model, sae, persona, cfg, 0, 0, tmp_path)
    assert sum(calls) == 2 * 16 * 3
    for key, chats in (("situation", persona.situation), ("situation_neutral", persona.situation_neutral)):
        for i in range(16):
            want = " ".join(chats[i][-1]["content"].split()[-4:-1])  # "... <marker> <i> ?" -> its last words
            got = [r["reply"] for r in read.replies if r["set"] == key and r["item"] == i]
            assert len(got) == 3 and all(want in g for g in got), (key, i, want, got)
    reply = read.acts["situation_reply"]
    assert len(reply.tokens) == 16 and reply.latents_NF.shape[0] == 16


def test_a_corrupt_reply_cache_is_resampled(tiny_model, planted, tmp_path):
    persona, sae, read, _ = planted
    first = situations.read_situations(tiny_model, sae, persona, CFG, 0, 0, tmp_path)
    (path,) = tmp_path.glob("*.json")
    path.write_text("{not json")
    again = situations.read_situations(tiny_model, sae, persona, CFG, 0, 0, tmp_path)
    assert not again.cached and len(again.replies) == len(first.replies)
    assert situations.read_situations(tiny_model, sae, persona, CFG, 0, 0, tmp_path).cached


def test_a_latent_is_tested_from_min_active_items_pooled_items_on():
    """Hand-built case: latent 0 fires on exactly 3 of the pooled items (min_active_items), latent 1 on 2."""
    from psm_repro.core.finder import ItemActs

    trait = torch.zeros(10, 2)
    neutral = torch.zeros(10, 2)
    trait[[0, 1], 0], neutral[4, 0] = 1.0, 0.5
    trait[2, 1], neutral[3, 1] = 1.0, 1.0

    def acts(x):
        return ItemActs(x, torch.zeros_like(x, dtype=torch.long), torch.zeros(10, 4), [[1]] * 10)

    c = situations.contrast(acts(trait), acts(neutral), CFG, seed=0)
    assert c.tested_F.tolist() == [True, False]
    assert c.p_F[1] == 1.0 and c.q_F[1] == 1.0  # untested latents never reach the FDR step
    assert float(c.effect_F[0]) == pytest.approx(np.mean([1, 1, 0, 0, -0.5, 0, 0, 0, 0, 0]) / max(
        np.std([1, 1, 0, 0, -0.5, 0, 0, 0, 0, 0], ddof=1), 1e-3 + 0.05 * 1.0))


def test_the_effect_interval_matches_scipy_and_covers_the_estimate():
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 1.0, size=30)
    lo, hi = situations.effect_interval(x, 2000, seed=3)
    ref = sps.bootstrap((x,), lambda v, axis=-1: v.mean(axis) / v.std(axis, ddof=1), n_resamples=2000,
                        vectorized=True, method="BCa", rng=np.random.default_rng(3)).confidence_interval
    assert (lo, hi) == pytest.approx((ref.low, ref.high))  # normal data: the SD floor never binds
    d = x.mean() / x.std(ddof=1)
    assert lo < d < hi
    lo2, hi2 = situations.effect_interval(x + 1.0, 2000, seed=3)
    assert lo2 > hi  # a larger shift moves the interval up
    assert np.isnan(situations.effect_interval(np.zeros(10), 100, 0)[0])


def test_a_latent_that_passes_for_three_other_personas_is_generic(tiny_model, planted, tmp_path):
    persona, sae, read, _ = planted
    others = tmp_path / "others"
    others.mkdir()
    for k, marker in enumerate(("zorblax", "zorblax", "sad")):
        write_persona(others, name=f"other_{k}", n=16, marker=marker, seed=10 + k)
    cfg = dataclasses.replace(CFG, specificity=True, specificity_dir=str(others))
    found = find_features(tiny_model, sae, persona, cfg, seed=0)
    spec = specificity(tiny_model, sae, persona, found.rows, cfg, 0, tmp_path / "spec")
    top = found.rows[0]
    assert top["feature"] == SCRIPTED and top["other_personas_passed"] == "other_0 other_1"
    assert not top["generic"]  # two of three others: not generic at the default threshold of 3
    strict = dataclasses.replace(cfg, generic_personas=2)
    spec = specificity(tiny_model, sae, persona, found.rows, strict, 0, tmp_path / "spec")
    assert top["generic"] and SCRIPTED in spec["generic_in_top10"]
    assert spec["headline_feature"] == next(r["feature"] for r in found.rows if not r["generic"])
    assert spec["headline_feature"] != SCRIPTED
    write_persona(others, name="other_3", n=16, marker="zorblax", seed=13)
    spec = specificity(tiny_model, sae, persona, found.rows, cfg, 0, tmp_path / "spec")  # three of four now
    assert top["generic"] and spec["headline_feature"] != SCRIPTED
    assert sorted(spec["top10_scores_elsewhere"][SCRIPTED]) == ["other_0", "other_1", "other_2", "other_3"]
    assert list((tmp_path / "spec").glob("other_0-*.npz"))  # cached per persona
