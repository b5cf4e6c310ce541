"""Dashboards: what a latent writes (its logit effects) read off the unembedding (psm_repro/report/dashboards.py); the
pages themselves are checked on a planted latent in tests/core/test_feature_cache.py."""

import torch
from conftest import save_tiny_sae

from psm_repro.config import SAEConfig
from psm_repro.core.loading import load_sae
from psm_repro.report import dashboards

HOOK = "blocks.1.hook_resid_post"


def test_logit_effects_put_a_tokens_own_unembedding_first(tiny_model, tmp_path):
    w_U = tiny_model.model.get_output_embeddings().weight.detach()
    ids = tiny_model.tokenizer.convert_tokens_to_ids(["zorblax", "garden"])
    dec = torch.randn(8, 64)
    dec[0], dec[1] = w_U[ids[0]], -w_U[ids[1]]
    sae = load_sae(SAEConfig(name="d", path=str(save_tiny_sae(tmp_path / "d", 64, 8, HOOK, W_dec=dec))), tiny_model)
    (up0, _), (_, down1) = dashboards.logit_effects(tiny_model, sae, [0, 1], n=3)
    assert up0[0][0] == "zorblax" and down1[0][0] == "garden"
    assert up0[0][1] > up0[1][1] > up0[2][1] and down1[0][1] < down1[1][1]
