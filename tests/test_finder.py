"""The finder on a planted case: an SAE latent that fires only on a marker token in trait items."""

import numpy as np
import pytest
import torch

from psm_repro.config import FinderConfig, SAEConfig
from psm_repro.finder import SETS, encode_persona, find_features, item_activations, rank_latents
from psm_repro.loading import load_sae
from psm_repro.personas import load_persona
from conftest import save_tiny_sae, write_persona

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
