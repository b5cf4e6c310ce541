"""The committed SAE trained by `train-sae` on the committed corpus (slow: loads the real embedded model).

The weights, not just the report: held-out FVU re-measured here with this test's own arithmetic, and the corpus
the report names is the committed one, shard for shard."""

import json
from pathlib import Path

import pytest
import torch

from psm_repro.config import SAEConfig, TrainSAEConfig
from psm_repro.core.paths import project_path

ROOT = Path(__file__).parents[2]
SAE_DIR = ROOT / TrainSAEConfig().out_dir
pytestmark = pytest.mark.slow


def _report():
    return json.loads((SAE_DIR / "training_report.json").read_text())


def test_the_report_names_the_committed_corpus_and_the_training_budget():
    report = _report()
    manifest = json.loads((project_path(report["corpus_dir"]) / "manifest.json").read_text())
    assert report["corpus"]["shards"] == manifest["shards"]
    assert report["training_tokens"] >= 10_000_000
    assert sum(p.stat().st_size for p in SAE_DIR.glob("*.safetensors")) <= 20 * 2**20


def test_committed_weights_reconstruct_held_out_text_the_way_the_report_says():
    from psm_repro.config import ModelConfig
    from psm_repro.core.loading import load_model, load_sae
    from psm_repro.sae_training.data import heldout_sequences, load_corpus

    report = _report()
    model = load_model(ModelConfig())
    sae = load_sae(SAEConfig(path=str(SAE_DIR), d_in=576), model)
    cfg = TrainSAEConfig()
    held = heldout_sequences(load_corpus(project_path(report["corpus_dir"])), cfg, model.tokenizer.bos_token_id,
                             report["seed"])
    for name in ("narrative", "chats"):
        seqs = torch.tensor(held[name][:32])
        with torch.inference_mode():
            x = model.activations(seqs, torch.ones_like(seqs), "model.layers.15")[:, 2:].float().reshape(-1, 576)
            feats = sae.encode(x)
            fvu = ((sae.decode(feats) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
        assert abs(fvu - report["heldout"]["slices"][name]["fvu"]) < 0.03, name
        assert (feats > 0).sum(-1).float().mean().item() == pytest.approx(report["k"], abs=1)
