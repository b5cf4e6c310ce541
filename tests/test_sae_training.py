"""train-sae end to end on the tiny model: sae-lens's runner, held-out metrics, sae-lens on-disk format."""

import json
import random

from psm_repro.config import SAEConfig, TrainSAEConfig
from psm_repro.loading import load_sae
from psm_repro.sae_training import FIRST_POSITION, CorpusSplit, mean_activation, train


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
    assert weights["metadata"]["prepend_bos"] is True and weights["metadata"]["seqpos_slice"][0] == FIRST_POSITION
    sae = load_sae(SAEConfig(name="trained", path=str(tmp_path / "sae")), tiny_model)
    assert sae.W_dec.shape == (128, 64)
    assert (tmp_path / "sae" / "TRAINING_REPORT.md").exists()

    train(tiny_model, cfg, seed=0, out_dir=tmp_path / "sae", split=split)  # a second run keeps the first
    kept = list(tmp_path.glob("sae.replaced-*"))
    assert len(kept) == 1 and (kept[0] / "sae_weights.safetensors").exists()


def test_decoder_bias_starts_at_the_mean_activation_of_positions_the_sae_reads(tiny_model, tmp_path, monkeypatch):
    import sae_lens
    import torch

    rng = random.Random(1)
    vocab = list(range(3, len(tiny_model.tokenizer)))
    seqs = [[1] + [rng.choice(vocab) for _ in range(31)] for _ in range(40)]
    seen = {}

    class Stop(Exception):
        pass

    def fake_runner(cfg, override_dataset, override_model, override_sae):
        seen["b_dec"] = override_sae.b_dec.detach().clone()
        seen["seqpos"] = cfg.seqpos_slice
        raise Stop

    monkeypatch.setattr(sae_lens, "LanguageModelSAETrainingRunner", fake_runner)
    cfg = TrainSAEConfig(layer=1, d_sae=64, k=4, context_size=32, training_tokens=1000, b_dec_init_sequences=8,
                         out_dir=str(tmp_path / "sae"))
    try:
        train(tiny_model, cfg, seed=0, out_dir=tmp_path / "sae", split=CorpusSplit(seqs, seqs[:2], {}))
    except Stop:
        pass
    ids = torch.tensor(seqs[:8])
    acts = tiny_model.activations(ids, torch.ones_like(ids), "model.layers.1")[:, FIRST_POSITION:]
    expected = acts.reshape(-1, acts.shape[-1]).float().mean(0)
    assert seen["seqpos"] == (FIRST_POSITION, None)
    assert torch.allclose(seen["b_dec"], expected, atol=1e-5) and expected.norm() > 0
    assert torch.allclose(mean_activation(tiny_model, "model.layers.1", seqs[:8]), expected, atol=1e-5)
