"""posttrain on the tiny model: SFT labels, the control's matched windows, exact resume after a kill, planted and
null model diffs, the density-matched share, the blind-reading summary, and the command end to end."""

import copy
import json

import numpy as np
import pytest
import torch

from psm_repro.core.chat import encode_prompt
from psm_repro.posttraining import reading, readout, sft
from psm_repro.posttraining.data import IGNORE, control_examples, corpus_chats, sft_example, sft_examples
from psm_repro.sae_training.corpus_build import Doc, manifest, save_shard
from psm_repro.sae_training.data import load_corpus
from tests.conftest import WORDS, dashboard_overrides

TOPICS = WORDS[:40]


def chatml(tok, user: str, reply: str) -> list[int]:
    """A closed chat as the embedded chat model writes it into a corpus (ChatML, the reply's end of turn)."""
    return encode_prompt(tok, [{"role": "user", "content": user}]) + tok(reply, add_special_tokens=False)["input_ids"] \
        + [tok.eos_token_id] + tok("\n", add_special_tokens=False)["input_ids"]


def write_corpus(tok, out, model: str, n: int = 48):
    """A corpus of `n` closed chats and `n` narratives (every 4th prompt index held out), as build-corpus lays it,
    in `tok`'s ids; `model` is the manifest's author."""
    from psm_repro.config import CorpusConfig

    rng = np.random.default_rng(0)
    docs = []
    for i in range(n):
        words = [TOPICS[j] for j in rng.integers(0, len(TOPICS), 12)]
        docs.append(Doc("chats", chatml(tok, " ".join(words[:4]), " ".join(words[4:])), i))
        docs.append(Doc("narrative", tok(" ".join(words) + " .", add_special_tokens=False)["input_ids"], n + i))
    out.mkdir(parents=True)
    save_shard(out / "generated-00000.safetensors", docs, {"params": {}})
    cfg = CorpusConfig(generated_docs=2 * n, heldout_every=4, generation_dtype="float32")
    (out / "manifest.json").write_text(json.dumps(manifest(out, cfg, 0, tok, True, model)))
    return out


@pytest.fixture(scope="module")
def smollm2_tok():
    """The embedded chat model's tokenizer: the committed corpora's chats are its ChatML."""
    from transformers import AutoTokenizer

    from psm_repro.core.embedded import ensure_dequantized

    return AutoTokenizer.from_pretrained(ensure_dequantized())


@pytest.fixture(scope="module")
def corpus(smollm2_tok, tmp_path_factory):
    return load_corpus(write_corpus(smollm2_tok, tmp_path_factory.mktemp("pt") / "corpus", "smollm2_135m_it"))


def test_sft_labels_cover_the_assistant_turn_and_its_end_only(tiny_model):
    tok = tiny_model.tokenizer
    msgs = [{"role": "user", "content": "hello river"}, {"role": "assistant", "content": "sure garden"}]
    ex = sft_example(tok, msgs)
    start = len(encode_prompt(tok, msgs[:1]))
    assert ex.labels[:start] == [IGNORE] * start
    assert ex.labels[start:] == ex.ids[start:]
    learned = tok.decode(ex.ids[start:])
    assert "sure garden" in learned and "hello" not in learned and tok.eos_token in learned


def test_corpus_chats_parse_back_and_the_control_windows_match_every_sft_length(tiny_model, corpus, smollm2_tok):
    tok = tiny_model.tokenizer
    chats = corpus_chats(corpus, smollm2_tok, "train")
    assert len(chats) == 36  # 12 of 48 held out (prompt index % 4 == 0)
    assert all(c.prompt_index % 4 and [m["role"] for m in c.messages] == ["user", "assistant"] for c in chats)
    assert all(len(c.messages[0]["content"].split()) == 4 and len(c.messages[1]["content"].split()) == 8 for c in chats)
    held = corpus_chats(corpus, smollm2_tok, "heldout")
    assert len(held) == 12 and not {c.prompt_index for c in held} & {c.prompt_index for c in chats}
    picked, rest = sft_examples(tok, chats, 10, 256, 0)
    assert len(picked) == 10 and len(rest) == 26
    control = control_examples(tok, corpus, smollm2_tok, [len(e.ids) for e in picked], 0)
    assert [len(c.ids) for c in control] == [len(e.ids) for e in picked]  # same shapes, same token count
    assert all(c.ids[0] == tok.bos_token_id and c.labels[0] == IGNORE and c.labels[1:] == c.ids[1:] for c in control)
    narrative = {t for d in corpus.train["narrative"]
                 for t in tok(smollm2_tok.decode(d.ids) + "\n\n", add_special_tokens=False)["input_ids"]}
    assert {t for c in control for t in c.ids[1:]} <= narrative  # narrative text only
    with pytest.raises(ValueError, match="posttrain.chats: asked for 99"):
        sft_examples(tok, chats, 99, 256, 0)


def _examples(tok, n=12):
    msgs = [[{"role": "user", "content": f"{TOPICS[i]} question"}, {"role": "assistant", "content": f"answer {TOPICS[i + 1]} sure"}]
            for i in range(n)]
    return [sft_example(tok, m) for m in msgs]


def _train(model, examples, ckpt, **kw):
    return sft.train_lora(model, examples, rank=4, lr=1e-2, batch_size=4, epochs=2, checkpoint_every=2, seed=0,
                          ckpt_dir=ckpt, desc="test", **kw)


def test_a_killed_arm_resumes_to_the_weights_of_an_uninterrupted_one(tiny_model, tmp_path):
    examples = _examples(tiny_model.tokenizer)
    whole = copy.deepcopy(tiny_model)
    log_a = _train(whole, examples, tmp_path / "a")
    assert len(log_a["loss"]) == 6 and log_a["loss"][-1] < log_a["loss"][0]  # it learns

    def killed_at(step):
        if step == 3:
            raise KeyboardInterrupt

    cut = copy.deepcopy(tiny_model)
    with pytest.raises(KeyboardInterrupt):
        _train(cut, examples, tmp_path / "b", on_step=killed_at)
    state = torch.load(tmp_path / "b" / sft.STATE_FILE, weights_only=False)
    assert state["step"] == 2  # the last checkpoint before the kill
    resumed = copy.deepcopy(tiny_model)
    log_b = _train(resumed, examples, tmp_path / "b")
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert log_a["loss"] == log_b["loss"] and not (tmp_path / "b" / sft.STATE_FILE).exists()
    changed = [k for k in a if not torch.equal(a[k], tiny_model.model.state_dict()[k])]
    assert changed  # the merged adapters moved the weights


def test_a_finished_arm_is_loaded_not_trained_again(tiny_model, tmp_path, monkeypatch):
    examples = _examples(tiny_model.tokenizer)
    first = copy.deepcopy(tiny_model)
    _train(first, examples, tmp_path / "c")
    monkeypatch.setattr(sft, "_train", lambda *a, **k: pytest.fail("trained again"))
    again = copy.deepcopy(tiny_model)
    _train(again, examples, tmp_path / "c")
    a, b = first.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_batch_order_is_fixed_by_the_seed_and_covers_every_example_each_epoch():
    steps = sft.batch_order(10, 4, 2, seed=3)
    assert steps == sft.batch_order(10, 4, 2, seed=3) and steps != sft.batch_order(10, 4, 2, seed=4)
    assert [len(s) for s in steps] == [4, 4, 2, 4, 4, 2]
    assert sorted(sum(steps[:3], [])) == list(range(10)) and sorted(sum(steps[3:], [])) == list(range(10))
    assert sum(steps[:3], []) != sum(steps[3:], [])  # each epoch is shuffled anew


def test_the_model_diff_finds_a_planted_riser_and_an_identical_model_gives_no_riser():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(40, 64, generator=g)
    control = base + 0.05 * torch.randn(40, 64, generator=g)  # each fine-tune moves every latent a little
    post = base + 0.05 * torch.randn(40, 64, generator=g)
    post[:, 17] += 0.5  # planted: latent 17 rises in the post-trained model and not in the control
    post[:, 5] += 0.5
    control[:, 5] += 0.5  # latent 5 rises in both: any fine-tune does it, so it is no riser
    control[:, 9] -= 0.5  # latent 9 falls in the control only: above the control, not above base, no riser
    post[:, 30] += 0.2
    control[:, 30] += 0.1  # latent 30 rises in both, more in post: a smaller riser
    res = readout.model_diff(post, control, base, top_n=10, n_permutations=2000, seed=0)
    assert [int(f) for f in res["top"][:2]] == [17, 30] and (res["top_q"][:2] < 0.01).all()
    q_of = dict(zip(res["top"].tolist(), res["top_q"]))
    assert all(q_of.get(f, 1.0) >= 0.05 for f in (5, 9))  # neither is called a riser
    assert sum(q < 0.05 for q in res["top_q"]) == 2
    assert res["rise_vs_base"][17] == pytest.approx(0.5, abs=0.05)
    same = readout.model_diff(base, base.clone(), base, top_n=10, n_permutations=2000, seed=0)
    assert torch.all(same["rise_vs_control"] == 0) and (same["top_q"] >= 0.05).all()


def test_where_a_riser_fires_is_its_peak_token_in_its_most_active_turns(tiny_model):
    from psm_repro.core.finder import ItemActs

    tok = tiny_model.tokenizer
    turns = [tok(t, add_special_tokens=False)["input_ids"] for t in ("the river was cold", "she kept a secret letter",
                                                                     "he told the story")]
    lat = torch.tensor([[0.0, 1.0], [0.0, 3.0], [0.0, 2.0]])  # latent 1: most active on turn 1, then 2, then 0
    arg = torch.tensor([[0, 1], [0, 3], [0, 2]])
    acts = ItemActs(lat, arg, torch.zeros(3, 4), turns)
    tokens, context = readout.where_it_fires(acts, 1, tok)
    assert tokens == "'secret' 'the' 'river'"
    assert "[[secret]]" in context and context.startswith("...she kept a")
    assert readout.where_it_fires(acts, 0, tok) == ("", "")  # never fires: nothing to show


def test_the_share_of_narrative_latents_is_compared_with_its_matched_random_latents():
    member = np.zeros(20, dtype=bool)
    member[[1, 2, 3]] = True
    out = readout.share_vs_random([1, 2, 3, 4], [10, 11, 12, 2], member, 1000, 0)
    assert out["share"] == 0.75 and out["random_share"] == 0.25 and out["diff"] == pytest.approx(0.5)
    freq = torch.tensor([0.1, 0.5, 0.11, 0.49, 0.9])
    norms = torch.ones(5)
    assert readout.density_matched([0, 1], freq, norms, 0, set()) == [2, 3]  # nearest frequency, not reused


def test_the_reading_summary_joins_labels_with_the_key(tmp_path):
    users = ["a", "b", "c", "d"]
    replies = {"base": ["x"] * 4, "posttrained": ["y"] * 4, "control": ["z"] * 4}
    assert reading.write_sheet(tmp_path, users, replies, 0) == 12
    sheet = [json.loads(x) for x in (tmp_path / "sheet.jsonl").read_text().splitlines()]
    key = {r["id"]: r for r in map(json.loads, (tmp_path / "key.jsonl").read_text().splitlines())}
    assert set(sheet[0]) == {"id", "user", "reply"}  # the reader never sees the model
    assert reading.summarise(tmp_path, 1000, 0) is None
    answer = {"base": [0, 0, 1, 0], "posttrained": [1, 1, 1, 0], "control": [0, 1, 0, 0]}
    voice = {"base": [0, 0, 0, 0], "posttrained": [1, 1, 1, 1], "control": [1, 0, 0, 0]}
    rows = [{"id": k, "answer": answer[r["model"]][r["item"]], "voice": voice[r["model"]][r["item"]], "labeller": "t"}
            for k, r in key.items()]
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))
    with pytest.raises(ValueError, match="1 ids of key.jsonl have no label"):
        reading.summarise(tmp_path, 1000, 0)
    bad = rows[:-1] + [{k: v for k, v in rows[-1].items() if k != "voice"}]
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    with pytest.raises(ValueError, match="labels.jsonl:12: expected an id from key.jsonl and answer 0 or 1 and voice"):
        reading.summarise(tmp_path, 1000, 0)
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = reading.summarise(tmp_path, 1000, 0)
    assert s["answer"]["models"]["posttrained"]["share"] == 0.75 and s["answer"]["models"]["base"]["share"] == 0.25
    assert s["answer"]["differences"]["posttrained - base"]["diff"] == pytest.approx(0.5)
    assert s["answer"]["differences"]["posttrained - control"]["diff"] == pytest.approx(0.5)
    assert s["voice"]["models"]["posttrained"]["share"] == 1.0 and s["voice"]["models"]["base"]["share"] == 0.0
    assert s["voice"]["differences"]["posttrained - control"]["diff"] == pytest.approx(0.75)
    assert "second_reader" not in s
    flipped = [dict(r, answer=1 - r["answer"], labeller="u") if k < 3 else dict(r, labeller="u")
               for k, r in enumerate(rows)]
    (tmp_path / "labels_second.jsonl").write_text("".join(json.dumps(r) + "\n" for r in flipped))
    sr = reading.summarise(tmp_path, 1000, 0)["second_reader"]
    a, b = [r["answer"] for r in rows], [r["answer"] for r in flipped]  # hand-computed kappa: 9 of 12 agree
    pa, pb = sum(a) / 12, sum(b) / 12
    p_e = pa * pb + (1 - pa) * (1 - pb)
    assert sr["answer"]["agreement"] == 0.75 and sr["answer"]["kappa"] == pytest.approx((0.75 - p_e) / (1 - p_e))
    assert sr["voice"]["agreement"] == 1.0 and sr["voice"]["kappa"] == pytest.approx(1.0)


def test_posttrain_runs_end_to_end_and_tables_fill_in_the_reading(tiny_model_dir, tiny_sae_dir, tiny_model, smollm2_tok,
                                                                  reference_dir, tmp_path, monkeypatch, capsys):
    from psm_repro.cli.commands import main
    from psm_repro.posttraining.card import rerender

    from psm_repro.posttraining import run as posttrain_run

    monkeypatch.setattr(posttrain_run, "cache_root", lambda: tmp_path / "cache")  # fresh checkpoints
    c = write_corpus(smollm2_tok, tmp_path / "corpus", "smollm2_135m_it")
    own = write_corpus(tiny_model.tokenizer, tmp_path / "own", "hf_local")
    out = tmp_path / "run"
    args = ["posttrain", "model=hf_local", f"model.path={tiny_model_dir}", "model.device=cpu", "sae=local",
            f"sae.path={tiny_sae_dir}", f"posttrain.chats_corpus={c}", f"posttrain.eval_corpus={own}",
            "posttrain.chats=8", "posttrain.batch_size=4", "posttrain.epochs=2", "posttrain.lora_rank=4",
            "posttrain.max_new_tokens=6", "posttrain.heldout_sequences=4", "posttrain.context_size=16",
            "posttrain.diff_items=16", "posttrain.diff_top_n=8", "posttrain.n_permutations=200",
            "finder.n_permutations=200", f"posttrain.posttrained_sae={tiny_sae_dir}", "posttrain.n_rotations=4",
            *dashboard_overrides(reference_dir, tmp_path / "fc"), f"hydra.run.dir={out}"]
    assert main(args) == 0, capsys.readouterr().err
    s = json.loads((out / "summary.json").read_text())
    assert s["training"]["posttrained"]["tokens"] == s["training"]["control"]["tokens"]
    assert s["training"]["posttrained"]["steps"] == s["training"]["control"]["steps"] == 4
    assert {(r["model"], r["slice"]) for r in s["transfer"]} == {(m, sl) for m in ("base", "posttrained", "control")
                                                                   for sl in ("narrative", "chats")}
    base_rows = [r for r in s["transfer"] if r["model"] == "base"]
    assert all(np.isfinite(r["fvu"]) for r in base_rows)
    assert len(s["diff"]["top"]) == 8 and s["diff"]["n_turns"] == 16
    assert all("peak_tokens" in r for r in s["diff"]["top"])
    assert "Not read yet" in (out / "summary.md").read_text()
    post = s["reuse"]["posttrained"]  # the base SAE itself as the post-trained model's SAE: a copy matches 100%
    assert post["reused"]["share"] == 1.0 and post["reused"]["n"] + post["n_dead"] == 256
    assert "base_seed" not in s["reuse"] and "No second seed of the base SAE" in (out / "summary.md").read_text()
    assert len((out / "reuse.csv").read_text().splitlines()) == 257
    from psm_repro.report.posttraining import posttrain_section

    row = posttrain_section([("run", s)], tmp_path)[-1]
    assert "not read yet" in row and "| 1.000 [" in row and " / - |" in row  # reused share; no seed ceiling
    key = [json.loads(x) for x in (out / "reading" / "key.jsonl").read_text().splitlines()]
    assert len(key) == 3 * 60
    labels = [{"id": r["id"], "answer": int(r["model"] == "posttrained"), "voice": int(r["model"] != "base"),
               "labeller": "planted"} for r in key]
    (out / "reading" / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    md = rerender(out)
    assert "more than base and control: **yes**" in md and "| posttrained | 1.00" in md
    assert "speaks as the assistant more than base and control: **no**" in md  # the control speaks as one too
