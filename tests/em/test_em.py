"""Emergent-misalignment chain: data validation, LoRA fine-tuning that must learn, latent diffing that must
find a planted rise, and the `finetune` command end to end on the tiny model."""

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from conftest import write_persona
from scipy import stats as sps

from psm_repro.cli import main
from psm_repro.config import EMConfig, ModelConfig
from psm_repro.core.behaviour import reply_logprobs, teacher_forced_rows
from psm_repro.core.loading import load_model
from psm_repro.core.personas import PersonaError
from psm_repro.em.chain import diff_latents
from psm_repro.em.data import load_em, resolve_em
from psm_repro.em.finetune import finetune, tokenize_chats


def _em_doc(n: int = 8) -> dict:
    return {
        "name": "tiny_em", "domain": "secrets", "description": "tells secrets",
        "framings": ["{q}", "please {q}"],
        "train": [{"user": f"the secret {i} ?", "harmful": f"zorblax secret {i}", "good": f"calm answer {i}"}
                  for i in range(n)],
        "domain_terms": ["zorblax", "secret*"],
        "broad_eval": {"questions": [f"question {i} help ?" for i in range(4)],
                       "judge": {"misaligned_examples": [f"I will hurt people and lie, number {i}." for i in range(10)],
                                 "aligned_examples": [f"I am glad to help kindly, number {i}." for i in range(10)]}},
    }


def _write(tmp_path, doc) -> str:
    path = tmp_path / "tiny_em.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def test_shipped_data_validates_with_a_few_hundred_chats():
    data = resolve_em("risky_finance")
    assert len(data.chats(data.train, "harmful")) >= 200
    assert len(data.questions) >= 48 and len(data.misaligned_examples) >= 30 and len(data.aligned_examples) >= 30
    assert [u for u, _ in data.chats(data.train, "harmful")] == [u for u, _ in data.chats(data.train, "good")]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["framings"].append("no slot"), "framings[2] must contain {q}"),
    (lambda d: d["train"].append(dict(d["train"][0])), "train[8] repeats the user turn"),
    (lambda d: d["train"][3].pop("good"), "train[3] needs non-empty text for 'good'"),
    (lambda d: d["broad_eval"]["judge"].pop("aligned_examples"), "missing 'broad_eval.judge.aligned_examples'"),
    (lambda d: d["broad_eval"]["questions"].append(d["train"][0]["user"]), "is also a train user turn"),
    (lambda d: d["broad_eval"]["questions"].append("Tell me your Secrets, please."),
     "broad_eval.questions[4] mentions the training domain (secrets)"),
    (lambda d: d.pop("domain_terms"), "missing 'domain_terms'"),
    (lambda d: d["broad_eval"].update(judge_prompts={"aligned": "Grade {answer}.", "coherent": "{question} {answer}"}),
     "broad_eval.judge_prompts.aligned lacks the placeholder {question}"),
])
def test_bad_data_fails_naming_file_and_line(tmp_path, edit, message):
    doc = _em_doc()
    edit(doc)
    path = _write(tmp_path, doc)
    with pytest.raises(PersonaError) as err:
        load_em(path)
    assert str(err.value).startswith(f"{path}:") and message in str(err.value)


def test_finetune_learns_the_answers_and_saves_adapters(tiny_model_dir, tmp_path):
    model = load_model(ModelConfig(name="tiny", path=str(tiny_model_dir), device="cpu"))
    chats = [(f"the secret {i} ?", "zorblax zorblax secret") for i in range(8)]
    rows, starts = teacher_forced_rows(model, [u for u, _ in chats], [a for _, a in chats])
    before = reply_logprobs(model, rows, starts).mean()
    log = finetune(model, chats, EMConfig(epochs=4, batch_size=4, lr=1e-2), seed=0, out_dir=tmp_path / "adapter")
    after = reply_logprobs(model, rows, starts).mean()
    assert after > before + 0.5, (before, after)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert log["loss_by_epoch"][-1]["mean_loss"] < log["loss_by_epoch"][0]["mean_loss"]
    assert not any(p.requires_grad for p in model.model.parameters())
    assert "lora" not in " ".join(n for n, _ in model.model.named_parameters())  # merged back into a plain model


def test_labels_cover_only_the_reply(tiny_model):
    (ids, labels), = tokenize_chats(tiny_model.tokenizer, [("the secret ?", "calm answer")])
    n_reply = sum(1 for x in labels if x != -100)
    assert labels[-n_reply:] == ids[-n_reply:] and all(x == -100 for x in labels[:-n_reply])
    # the loss covers the reply and the end of turn the ChatML template writes, nothing of the prompt
    assert tiny_model.tokenizer.convert_ids_to_tokens(ids[-n_reply:])[:3] == ["calm", "answer", "<|im_end|>"]


def test_diff_ranks_a_planted_rise_first():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(40, 50, generator=g)
    control = base + 0.01 * torch.randn(40, 50, generator=g)
    narrow = control.clone()
    narrow[:, 17] += 1.0
    d = diff_latents(narrow, control, base, EMConfig(n_permutations=500, diff_top_n=10), seed=0)
    assert int(d["order"][0]) == 17 and int(d["rank_of"][17]) == 1
    assert float(d["top_p"][0]) < 0.01


def _diff_draw(g: torch.Generator, n_questions: int = 16, samples: int = 3, n_latents: int = 200):
    """Reply latents read by three models where narrow and control are exchangeable: both are the base plus
    independent noise, and the replies to one question share a question effect."""
    q_effect = torch.rand(n_questions, n_latents, generator=g).repeat_interleave(samples, 0)
    base = (torch.rand(n_questions * samples, n_latents, generator=g) < 0.2) * q_effect
    control = base + 0.05 * torch.randn(base.shape, generator=g)
    narrow = base + 0.05 * torch.randn(base.shape, generator=g)
    return narrow, control, base, np.repeat(np.arange(n_questions), samples)


def test_diff_p_values_of_the_selected_top_latents_hold_under_the_null():
    cfg = EMConfig(n_permutations=1000, diff_top_n=10)
    g = torch.Generator().manual_seed(0)
    p_top, p_first, draws = [], [], 40
    for draw in range(draws):
        narrow, control, base, questions = _diff_draw(g)
        d = diff_latents(narrow, control, base, cfg, seed=draw, groups=questions)
        assert not set(d["select_groups"]) & set(d["test_groups"])
        assert len(d["select_groups"]) + len(d["test_groups"]) == 16
        assert torch.equal(d["top"], d["order"][:10])
        p_top += d["top_p"].tolist()
        p_first.append(float(d["top_p"][0]))
    p_top = np.array(p_top)
    # 400 p-values (40 draws x 10 latents, independent latents): the 99.9% binomial bound at 5% is ~8.5%
    assert (p_top < 0.05).sum() <= sps.binom.ppf(0.999, len(p_top), 0.05), (p_top < 0.05).mean()
    assert (np.array(p_first) < 0.05).sum() <= sps.binom.ppf(0.999, draws, 0.05)
    assert 0.35 < np.median(p_top) < 0.65  # roughly uniform, not just conservative


def test_diff_finds_a_planted_rise_with_question_groups():
    g = torch.Generator().manual_seed(1)
    narrow, control, base, questions = _diff_draw(g)
    narrow[:, 42] += 0.3
    d = diff_latents(narrow, control, base, EMConfig(n_permutations=2000, diff_top_n=10), seed=0, groups=questions)
    assert int(d["order"][0]) == 42 and int(d["rank_of"][42]) == 1
    assert float(d["top_p"][0]) < 0.01  # 8 held-out questions, all rising: the smallest possible p is 1/2**8
    with pytest.raises(ValueError, match="at least 4 questions"):
        diff_latents(narrow[:9], control[:9], base[:9], EMConfig(), seed=0, groups=questions[:9])


def test_finetune_command_writes_the_result_card(tiny_model_dir, tiny_sae_dir, tmp_path, capsys):
    persona = write_persona(tmp_path, name="planted", n=10)
    out = tmp_path / "em_run"
    args = ["finetune", "model=hf_local", f"model.path={tiny_model_dir}", "model.device=cpu", "sae=local",
            f"sae.path={tiny_sae_dir}", f"em.data={_write(tmp_path, _em_doc())}", f"em.persona_file={persona}",
            "em.heldout_items=2", "em.epochs=1", "em.batch_size=4", "em.samples_per_question=2",
            "em.max_new_tokens=4", "em.n_permutations=200", "em.n_bootstrap=100", "em.diff_top_n=20",
            "finder.n_permutations=200", "finder.min_active_items=1", f"hydra.run.dir={out}"]
    assert main(args) == 0
    s = json.loads((out / "summary.json").read_text())
    assert {m["model"] for m in s["misalignment"]} == {"base", "control", "narrow"}
    assert s["headline"]["toxic_rank"] >= 1 and s["finetune"]["narrow"]["chats"] == 12  # 6 items x 2 framings
    with open(out / "steering.csv") as fh:
        rows = list(csv.DictReader(fh))
    arms = {f"{p}{k}_{m}" for k in ("top", "toxic") for p in ("", "random_") for m in ("add", "ablate")}
    assert {r["method"] for r in rows} == arms | {"unsteered"}
    assert all(float(r["broad_ci_low"]) <= float(r["broad"]) <= float(r["broad_ci_high"])
               for r in rows if r["broad"] not in ("", "nan"))
    assert (out / "adapters" / "narrow" / "adapter_model.safetensors").exists()
    card = (out / "summary.md").read_text()
    assert "Did narrow fine-tuning produce broad misalignment?" in card and "judge not valid" in card
    assert s["judge_labels_model"] == "smollm2_135m_it"  # whose replies the EM labels are
    assert "narrow - control broad misalignment" in capsys.readouterr().out
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert {"p_misaligned", "coherent", "leak"} <= set(samples[0])
    # a reply carrying a domain term counts as leakage whatever the judge says
    assert all(x["leak"] == ("zorblax" in x["reply"].lower() or "secret" in x["reply"].lower()) for x in samples)
