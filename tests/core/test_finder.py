"""The finder on a planted case: an SAE latent that fires only on a marker token in trait items."""

import numpy as np
import pytest
import torch
from conftest import save_tiny_sae, write_persona
from scipy import stats as sps

from psm_repro.config import FinderConfig, SAEConfig
from psm_repro.core import finder
from psm_repro.core.finder import SETS, ItemActs, encode_persona, find_features, item_activations, rank_latents
from psm_repro.core.loading import load_sae
from psm_repro.core.personas import load_persona

HOOK = "blocks.0.hook_resid_post"
PLANTED = 0


@pytest.fixture(scope="module")
def planted(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planted")
    persona = load_persona(write_persona(tmp, n=16))
    marker = tiny_model.tokenizer.convert_tokens_to_ids("zorblax")
    on, off = [], []
    for items in encode_persona(tiny_model, persona, prepend_bos=False).values():
        for e in items:
            ids = torch.tensor([e.ids])
            acts = tiny_model.activations(ids, torch.ones_like(ids), HOOK)[0]
            is_marker = torch.tensor(e.ids) == marker
            on.append(acts[is_marker])
            off.append(acts[~is_marker])
    on, off = torch.cat(on), torch.cat(off)
    direction = on.mean(0) - off.mean(0)
    direction /= direction.norm()
    lo, hi = (off @ direction).max(), (on @ direction).min()
    assert hi > lo, "marker not linearly separable at this layer; the planted test needs a new design"
    d_sae = 256
    torch.manual_seed(1)
    dec = torch.randn(d_sae, 64)
    dec /= dec.norm(dim=-1, keepdim=True)
    W_enc = dec.T * 0.5
    b_enc = torch.zeros(d_sae)
    W_enc[:, PLANTED] = direction
    b_enc[PLANTED] = -(lo + hi) / 2
    dec[PLANTED] = direction
    path = save_tiny_sae(tmp / "sae", 64, d_sae, HOOK, W_enc=W_enc, b_enc=b_enc, W_dec=dec)
    sae = load_sae(SAEConfig(name="planted", path=str(path)), tiny_model)
    return persona, sae


CFG = FinderConfig(n_permutations=20000, top_n=20, batch_size=8)


def test_planted_latent_is_ranked_first_and_significant(tiny_model, planted):
    persona, sae = planted
    found = find_features(tiny_model, sae, persona, CFG, seed=0)
    top = found.rows[0]
    assert top["feature"] == PLANTED
    assert top["significant"] and top["narrative_p"] < 0.01 and top["assistant_p"] < 0.01
    assert top["score"] > found.summary["shuffled_max_score_p95"]
    assert "zorblax" in top["top_tokens"]
    assert top["replicates"]


def test_shuffled_labels_do_not_rank_the_planted_latent_first(tiny_model, planted):
    persona, sae = planted
    encoded = encode_persona(tiny_model, persona, prepend_bos=False)
    acts = {s: item_activations(tiny_model, sae, encoded[s], "max", 8) for s in SETS}
    rng = np.random.default_rng(0)
    for kind in ("narrative", "assistant"):
        swap = torch.from_numpy(rng.permutation(len(encoded[kind])) < len(encoded[kind]) // 2)
        t, n = acts[kind].latents_NF.clone(), acts[f"{kind}_neutral"].latents_NF.clone()
        acts[kind].latents_NF[swap], acts[f"{kind}_neutral"].latents_NF[swap] = n[swap], t[swap]
    ranked = rank_latents(acts, CFG, seed=0)
    assert int(torch.argmax(ranked["score"])) != PLANTED
    assert ranked["q"][PLANTED] > 0.05


def test_mean_aggregation_also_finds_it(tiny_model, planted):
    persona, sae = planted
    found = find_features(tiny_model, sae, persona, FinderConfig(aggregation="mean", n_permutations=20000), seed=0)
    assert found.rows[0]["feature"] == PLANTED


def _exchangeable_acts(rng: np.random.Generator, n_pairs: int = 24, n_latents: int = 400,
                       planted: tuple[int, ...] = ()) -> dict[str, ItemActs]:
    """Synthetic per-item latents where trait and neutral items are exchangeable within pairs: sparse and
    non-negative, firing rates log-uniform from 2% to 25% (mostly rare, as in an SAE), and a per-pair scale
    shared by both items of a pair (item length, say). `planted` latents also fire strongly on most trait items."""
    rate = np.exp(rng.uniform(np.log(0.02), np.log(0.25), n_latents))
    acts = {}
    for s in ("narrative", "assistant"):
        scale = rng.lognormal(0.0, 0.5, (n_pairs, 1))
        for suffix in ("", "_neutral"):
            x = (rng.random((n_pairs, n_latents)) < rate) * rng.exponential(1.0, (n_pairs, n_latents)) * scale
            if not suffix:
                for f in planted:
                    x[:, f] += 3.0 * (rng.random(n_pairs) < 0.9)
            acts[s + suffix] = ItemActs(torch.tensor(x, dtype=torch.float32), None, None, None)
    return acts


# min_active_items=5 is where selecting on trait items alone visibly biases these rates (a latent must be
# lucky on trait items to reach it); 4000 permutations let a single latent reach q < 0.05 among ~100 tested.
NULL_CFG = FinderConfig(n_permutations=4000, min_active_items=5)
NULL_DRAWS = 200


@pytest.fixture
def one_thread():
    # these tests run thousands of tiny matmuls, for which a second thread only adds overhead (20x on a busy box)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_tested_latents_do_not_depend_on_which_item_of_a_pair_is_the_trait_item():
    acts = _exchangeable_acts(np.random.default_rng(1))
    before = finder.tested_latents(acts, 5)
    swap = torch.from_numpy(np.random.default_rng(2).random(24) < 0.5)
    for s in ("narrative", "assistant"):
        t, n = acts[s].latents_NF.clone(), acts[f"{s}_neutral"].latents_NF.clone()
        acts[s].latents_NF[swap], acts[f"{s}_neutral"].latents_NF[swap] = n[swap], t[swap]
    assert torch.equal(finder.tested_latents(acts, 5), before)
    # pooled trait + neutral counts: a latent on 3 trait and 2 neutral narrative items (and 5 assistant) is tested
    t = torch.zeros(10, 2)
    t[:3, 0] = 1.0
    n = torch.zeros(10, 2)
    n[3:5, 0] = 1.0
    a = torch.zeros(10, 2)
    a[:5] = 1.0
    acts = {"narrative": ItemActs(t, None, None, None), "narrative_neutral": ItemActs(n, None, None, None),
            "assistant": ItemActs(a, None, None, None), "assistant_neutral": ItemActs(torch.zeros(10, 2), None, None, None)}
    assert finder.tested_latents(acts, 5).tolist() == [True, False]
    assert finder.tested_latents(acts, 6).tolist() == [False, False]


def test_finder_statistics_are_calibrated_when_labels_are_exchangeable(one_thread):
    """Complete null over many simulated personas: the per-set sign-flip p-values of the tested latents,
    BH q-values, and the shuffled-label chance score must all hold their nominal level."""
    rng = np.random.default_rng(0)
    n_tests = n_p_below = n_q_below = any_discovery = top_beats_all_shuffled = 0
    for draw in range(NULL_DRAWS):
        r = rank_latents(_exchangeable_acts(rng), NULL_CFG, seed=draw)
        tested = r["active"].numpy()
        n_tests += 2 * tested.sum()
        n_p_below += sum(int((r[k].numpy()[tested] < 0.05).sum()) for k in ("narrative_p", "second_p"))
        q = r["q"][tested]
        n_q_below += int((q < 0.05).sum())
        any_discovery += bool((q < 0.05).any())
        # the finder's shuffled-label control: with 19 shuffles, the real top score beats all of them with
        # probability 1/20 when the selection is blind to labels
        null = finder._shuffled_max_scores(r, torch.Generator().manual_seed(draw), draws=19)
        top_beats_all_shuffled += float(r["score"][r["active"]].max()) > max(null)
    # bounds: the 99.9% binomial quantile at the nominal 5% (draws are independent; latents nearly so)
    assert n_p_below <= sps.binom.ppf(0.999, n_tests, 0.05), n_p_below / n_tests
    assert n_q_below <= 0.05 * n_tests / 2
    assert any_discovery <= sps.binom.ppf(0.999, NULL_DRAWS, 0.05), any_discovery / NULL_DRAWS
    assert top_beats_all_shuffled <= sps.binom.ppf(0.999, NULL_DRAWS, 0.05), top_beats_all_shuffled / NULL_DRAWS


def test_finder_finds_planted_latents_among_exchangeable_ones(one_thread):
    rng = np.random.default_rng(1)
    for draw in range(5):
        r = rank_latents(_exchangeable_acts(rng, planted=(3, 11)), NULL_CFG, seed=draw)
        assert set(torch.argsort(r["score"], descending=True)[:2].tolist()) == {3, 11}
        significant = set(np.flatnonzero(r["q"] < 0.05).tolist())
        assert {3, 11} <= significant and len(significant) <= 3
