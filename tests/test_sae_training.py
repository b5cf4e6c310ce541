"""train-sae end to end on the tiny model: sae-lens's runner, held-out metrics, sae-lens on-disk format."""

import json
import random

from psm_repro.config import SAEConfig, TrainSAEConfig
from psm_repro.loading import load_sae
from psm_repro.sae_training import CorpusSplit, train


def test_train_writes_a_loadable_half_precision_sae_with_a_report(tiny_model, tmp_path):
    rng = random.Random(0)
    vocab = list(range(3, len(tiny_model.tokenizer)))
    seqs = [[rng.choice(vocab) for _ in range(32)] for _ in range(72)]
    split = CorpusSplit(train=seqs[:64], heldout=seqs[64:], provenance={"source": "synthetic"})
    cfg = TrainSAEConfig(layer=1, d_sae=128, k=8, context_size=32, training_tokens=64 * 32, batch_size_tokens=256,
                         out_dir=str(tmp_path / "sae"))
    report = train(tiny_model, cfg, seed=0, out_dir=tmp_path / "sae", split=split)
    m = report["heldout_metrics"]
    for key in ("fvu", "dead_fraction", "ce_loss_recovered", "l0"):
        assert key in m
    assert 0 < m["l0"] <= 8
    weights = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert weights["metadata"]["hook_name"] == "model.layers.1" and weights["d_sae"] == 128
    sae = load_sae(SAEConfig(name="trained", path=str(tmp_path / "sae")), tiny_model)
    assert sae.W_dec.shape == (128, 64)
    assert (tmp_path / "sae" / "TRAINING_REPORT.md").exists()
