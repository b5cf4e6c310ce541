"""The peers' formats, vectors and A/B metric, each checked against a reference computed another way:
hand-written fixture files in each format (tests/data/peers/), HF hidden states and log-softmax computed
directly, a hand-made forward hook for steering, and hand-computed method tables."""

import json
import random

import numpy as np
import pytest
import torch
from conftest import WORDS, sentence

from psm_repro.config import PeersConfig, SteerConfig
from psm_repro.core.chat import encode_prompt, text_ids
from psm_repro.core.personas import PersonaError, load_persona, resolve_persona
from psm_repro.core.steering import Intervention
from psm_repro.peers.ab_metric import answer_ids, answer_logprobs, p_matching
from psm_repro.peers.formats import ABItem, PeerFormatError, detect_format, read_ab, read_trait
from psm_repro.peers.methods import compare_methods
from psm_repro.peers.vectors import Extraction, caa_vector, kept_pairs, persona_vector

DATA = __import__("pathlib").Path(__file__).parents[1] / "data" / "peers"
LAYER = 2  # the tiny SAE reads blocks.2.hook_resid_post: HF hidden_states[3], the output of layers[2]


# ---------------------------------------------------------------- formats

def test_each_format_is_detected_from_the_file(tmp_path):
    assert detect_format(DATA / "evil.json") == "persona_vectors"
    assert detect_format(DATA / "sycophancy_ab.json") == "caa"
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"prompts": ["a"]}))
    with pytest.raises(PeerFormatError, match="not a known persona format"):
        detect_format(other)
    txt = tmp_path / "x.txt"
    txt.write_text("hi")
    with pytest.raises(PeerFormatError, match=r"x\.txt: unknown persona file type"):
        detect_format(txt)


def test_a_trait_file_becomes_a_persona_with_alternate_questions():
    p = resolve_persona("secrecy", str(DATA / "evil.json"))
    assert (p.name, p.source) == ("evil", "persona_vectors")
    assert not p.narrative and not p.assistant and p.judge is None
    raw = json.loads((DATA / "evil.json").read_text())
    assert p.peers.questions == raw["questions"][0::2] and p.prompts == raw["questions"][1::2]
    assert p.peers.instruction[1] == (raw["instruction"][1]["pos"], raw["instruction"][1]["neg"])
    assert "{question}" in p.peers.eval_prompt and p.description == raw["instruction"][0]["pos"]


def test_a_caa_file_becomes_an_assistant_contrast_and_held_out_items():
    p = resolve_persona("secrecy", str(DATA / "sycophancy_ab.json"))
    raw = json.loads((DATA / "sycophancy_ab.json").read_text())
    assert p.source == "caa" and len(p.peers.ab_train) == 8 and len(p.peers.ab_test) == 8
    assert p.peers.ab_test[0].question == raw[1]["question"]
    assert p.assistant[1] == [{"role": "user", "content": raw[2]["question"]}, {"role": "assistant", "content": "(A)"}]
    assert p.assistant_neutral[1][-1]["content"] == "(B)"
    assert ABItem("q", "(B)", "(A)").answers() == ("(B", "(A")
    assert ABItem("q", "yes", "no").answers() == ("yes", "no")


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d["instruction"][1].pop("neg"), r"evil\.json: instruction\[1\]: missing field 'neg'"),
    (lambda d: d["questions"].__setitem__(2, 7), r"evil\.json: questions\[2\]: must be a non-empty string"),
    (lambda d: d.pop("eval_prompt"), r"evil\.json: missing field 'eval_prompt'"),
    (lambda d: d.__setitem__("instruction", "be evil"), r"evil\.json: instruction: must be a non-empty list"),
])
def test_a_broken_trait_file_names_the_item_and_field(tmp_path, edit, needle):
    data = json.loads((DATA / "evil.json").read_text())
    edit(data)
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PeerFormatError, match=needle) as err:
        read_trait(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d[3].pop("answer_not_matching_behavior"), r"item 3: missing field 'answer_not_matching_behavior'"),
    (lambda d: d[1].__setitem__("answer_matching_behavior", 2),
     r"item 1: answer_matching_behavior: must be a non-empty"),
    (lambda d: d[0].__setitem__("answer_matching_behavior", "  "), r"item 0: answer_matching_behavior"),
    (lambda d: d[2].__setitem__("answer_not_matching_behavior", "(A)"), r"item 2: .* are the same answer"),
    (lambda d: d.__setitem__(4, "just a question"), r"item 4: must be a mapping"),
])
def test_a_broken_ab_file_names_the_item_and_field(tmp_path, edit, needle):
    data = json.loads((DATA / "sycophancy_ab.json").read_text())
    edit(data)
    path = tmp_path / "ab.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PeerFormatError, match=needle):
        read_ab(path)
    # and through persona_file=, as the CLI reads it: one line, the file first
    with pytest.raises(PersonaError, match=str(path)):
        resolve_persona("secrecy", str(path))


def test_free_text_answers_are_accepted(tmp_path):
    items = read_ab(DATA / "sycophancy_ab.json")
    assert items[4].answers() == (items[4].matching, items[4].not_matching) and len(items[4].matching) > 5


def test_a_native_persona_combines_its_sets_with_peer_files(tmp_path):
    import shutil

    import yaml
    from conftest import write_persona

    path = write_persona(tmp_path)
    shutil.copy(DATA / "evil.json", tmp_path / "evil.json")
    data = yaml.safe_load(path.read_text())
    data["peers"] = {"trait": "evil.json", "ab_train": "missing.json",
                     "ab_test": [{"question": "q?", "answer_matching_behavior": "(A)",
                                  "answer_not_matching_behavior": "(B)"}]}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PersonaError, match=r"planted\.yaml:\d+: peers\.ab_train: no file"):
        load_persona(path)
    data["peers"]["ab_train"] = str(DATA / "sycophancy_ab.json")
    path.write_text(yaml.safe_dump(data))
    p = load_persona(path)
    assert p.narrative and len(p.peers.instruction) == 3 and len(p.peers.ab_train) == 16
    assert p.peers.ab_test == [ABItem("q?", "(A)", "(B)")]
    data["peers"]["ab_test"] = [{"question": "q?"}]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PersonaError, match=r"peers\.ab_test\[0\]: missing field 'answer_matching_behavior'"):
        load_persona(path)


def test_every_shipped_persona_has_peer_data_with_50_held_out_ab_items():
    from psm_repro.judges.validation import shipped_personas

    for p in shipped_personas():
        assert p.peers and len(p.peers.ab_test) >= 50 and p.peers.ab_train and p.peers.has_vector_data, p.name
        train = {x.question for x in p.peers.ab_train}
        assert not train & {x.question for x in p.peers.ab_test}, p.name
        assert not set(p.peers.questions) & set(p.prompts), p.name
        assert sum(x.matching == "(A)" for x in p.peers.ab_test) == len(p.peers.ab_test) // 2, p.name


# ---------------------------------------------------------------- the A/B metric

def _tiny_items(n: int, seed: int = 0) -> list[ABItem]:
    rng = random.Random(seed)
    return [ABItem(sentence(rng, 6) + " ?", sentence(rng, 3), sentence(rng, 4)) for _ in range(n)]


def _reference_logprob(model, prompt: list[int], answer: list[int], vector=None) -> float:
    """Sum of log P(answer tokens) in one unpadded forward, with `vector` added to the layer's output at the
    answer positions by a hand-made hook (the steering code is not used)."""
    hf = model.model
    handle = None
    if vector is not None:
        def hook(module, args, out):
            h = out[0] if isinstance(out, tuple) else out
            h = h.clone()
            h[:, len(prompt):] += vector
            return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h
        handle = hf.model.layers[LAYER].register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = hf(input_ids=torch.tensor([prompt + answer])).logits[0].float()
    finally:
        if handle:
            handle.remove()
    lp = torch.log_softmax(logits, -1)
    return float(sum(lp[len(prompt) - 1 + i, t] for i, t in enumerate(answer)))


def test_ab_logprobs_match_one_unpadded_forward_per_answer(tiny_model, tiny_sae):
    tok = tiny_model.tokenizer
    items = _tiny_items(5)
    prompts = [encode_prompt(tok, [{"role": "user", "content": x.question}]) for x in items]
    sets = [[text_ids(tok, x.matching) for x in items], [text_ids(tok, x.not_matching) for x in items]]
    direction = torch.randn(64, generator=torch.Generator().manual_seed(3))
    iv = Intervention(mode="add", direction=direction, scale=1.5)
    got = answer_logprobs(tiny_model, prompts, sets, [(None, 0.0), (iv, 2.0), (iv, -1.0)], tiny_sae)
    for a in range(2):
        for i in range(len(items)):
            assert got[a, 0, i] == pytest.approx(_reference_logprob(tiny_model, prompts[i], sets[a][i]), abs=1e-4)
            for c, coef in ((1, 2.0), (2, -1.0)):
                ref = _reference_logprob(tiny_model, prompts[i], sets[a][i], coef * 1.5 * direction)
                assert got[a, c, i] == pytest.approx(ref, abs=1e-4)
    # steering changes the answers' probabilities (else the check above would be vacuous)
    assert np.abs(got[:, 1] - got[:, 0]).max() > 1e-2


def test_p_matching_is_the_two_answers_renormalised(tiny_model, tiny_sae):
    tok = tiny_model.tokenizer
    items = _tiny_items(4, seed=1)
    p = p_matching(tiny_model, tiny_sae, items, [("unsteered", None, 0.0), ("system_prompt", None, 0.0)],
                   system="You are helpful .")
    for i, x in enumerate(items):
        for row, system in ((0, []), (1, [{"role": "system", "content": "You are helpful ."}])):
            prompt = encode_prompt(tok, system + [{"role": "user", "content": x.question}])
            m = _reference_logprob(tiny_model, prompt, text_ids(tok, x.matching))
            n = _reference_logprob(tiny_model, prompt, text_ids(tok, x.not_matching))
            assert p[row, i] == pytest.approx(np.exp(m) / (np.exp(m) + np.exp(n)), abs=1e-4)
    assert not np.allclose(p[0], p[1])  # the system turn reaches the prompt


def test_letter_answers_are_scored_as_parenthesis_then_letter():
    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [{"(": 1, "A": 2, "B": 3, "(A": 9}.get(text, 0)]}
    assert answer_ids(Tok(), "(A)") == [1, 2] and answer_ids(Tok(), "(B)") == [1, 3]


# ---------------------------------------------------------------- the vectors

def _hidden(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[LAYER + 1][0].float()


def test_caa_vector_is_the_mean_difference_at_the_answer_token(tiny_model, tiny_sae):
    tok = tiny_model.tokenizer
    items = _tiny_items(6, seed=2)
    got = caa_vector(tiny_model, tiny_sae, items)
    diffs = []
    for x in items:
        prompt = encode_prompt(tok, [{"role": "user", "content": x.question}])
        at = []
        for ans in (x.matching, x.not_matching):
            ids = prompt + text_ids(tok, ans)
            at.append(_hidden(tiny_model, ids + [tok.convert_tokens_to_ids("<|im_end|>")])[len(ids) - 1])
        diffs.append(at[0] - at[1])
    ref = torch.stack(diffs).mean(0)
    assert got.info["items"] == 6 and got.info["raw_norm"] == pytest.approx(float(ref.norm()), rel=1e-4)
    assert torch.allclose(got.direction, ref / ref.norm(), atol=1e-4)


def test_kept_pairs_follow_the_persona_vectors_filter_at_its_boundaries():
    cfg = PeersConfig(trait_threshold=0.5, coherence_threshold=0.5)
    pos_t = np.array([0.5, 0.49, 0.9, 0.9, 0.9, 0.9])
    neg_t = np.array([0.1, 0.1, 0.5, 0.49, 0.1, 0.1])
    pos_c = np.array([0.9, 0.9, 0.9, 0.9, 0.5, 0.49])
    neg_c = np.array([0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    assert kept_pairs(pos_t, neg_t, pos_c, neg_c, cfg).tolist() == [True, False, False, True, True, False]


def test_persona_vector_is_the_reply_token_mean_difference_over_kept_pairs(tiny_model, tiny_sae):
    tok = tiny_model.tokenizer
    rng = random.Random(4)
    from psm_repro.peers.formats import Peers

    peers = Peers(instruction=[("You are helpful .", "You are calm ."), ("be happy", "be sad")],
                  questions=[sentence(rng, 5) + " ?" for _ in range(3)])
    rows = [(k, q) for k in range(2) for q in peers.questions]
    ex = Extraction([q for _, q in rows], [k for k, _ in rows], [sentence(rng, 4) for _ in rows],
                    [sentence(rng, 5) for _ in rows])
    keep = np.array([True, False, True, True, False, True])
    scores = {"pos_trait": np.where(keep, 0.9, 0.2), "neg_trait": np.full(6, 0.1),
              "pos_coherence": np.ones(6), "neg_coherence": np.ones(6)}
    got = persona_vector(tiny_model, tiny_sae, ex, peers, scores, PeersConfig(min_pairs=2))
    means = {}
    for side, replies in ((0, ex.pos), (1, ex.neg)):
        per = []
        for i in np.where(keep)[0]:
            prompt = encode_prompt(tok, [{"role": "system", "content": peers.instruction[ex.pair[i]][side]},
                                         {"role": "user", "content": ex.questions[i]}])
            reply = text_ids(tok, replies[i])
            h = _hidden(tiny_model, prompt + reply)
            per.append(h[len(prompt):len(prompt) + len(reply)].mean(0))
        means[side] = torch.stack(per).mean(0)
    ref = means[0] - means[1]
    assert got.info["kept"] == 4 and torch.allclose(got.direction, ref / ref.norm(), atol=1e-4)
    few = persona_vector(tiny_model, tiny_sae, ex, peers, scores, PeersConfig(min_pairs=5))
    assert few.direction is None and "4 of 6 pairs passed" in few.info["why_not"]


# ---------------------------------------------------------------- the method table

def test_method_table_picks_each_coefficient_on_dev_and_ranks_on_test():
    # 4 prompts (dev 0, 2; test 1, 3); scores by hand
    cells = {("sae_latent", 1.0): [0.2, 0.5, 0.2, 0.7], ("sae_latent", 2.0): [0.4, 0.1, 0.4, 0.1],
             ("persona_vector", 1.0): [0.1, 0.9, 0.1, 0.9], ("persona_vector", 2.0): [0.3, 0.8, 0.3, 0.6],
             ("system_prompt", 0.0): [0.2, 0.3, 0.2, 0.3], ("unsteered", 0.0): [0.0, 0.1, 0.0, 0.2]}
    method, coef, prompt, score = [], [], [], []
    for (m, c), v in cells.items():
        for p, s in enumerate(v):
            method.append(m), coef.append(c), prompt.append(p), score.append(s)
    cols = {"method": np.array(method), "coef": np.array(coef), "prompt": np.array(prompt)}
    cols["split"] = np.where(cols["prompt"] % 2 == 0, "dev", "test")
    score = np.array(score)
    table = [{"method": m, "coefficient": c, "split": "dev", "score": float(np.mean(v[0::2]))}
             for (m, c), v in cells.items()]
    rows = compare_methods(table, {"score": score, "trait": score, "coherence": np.ones_like(score)}, cols,
                           ["sae_latent", "persona_vector"], SteerConfig(n_bootstrap=200), 0,
                           ab=[{"method": "persona_vector", "coefficient": 2.0, "p_matching": 0.7, "ci_low": 0.6,
                                "ci_high": 0.8}])
    by = {r["method"]: r for r in rows}
    assert by["sae_latent"]["coefficient"] == 2.0 and by["persona_vector"]["coefficient"] == 2.0
    assert by["sae_latent"]["score"] == pytest.approx(0.1) and by["persona_vector"]["score"] == pytest.approx(0.7)
    assert by["persona_vector"]["diff_vs_sae_latent"] == pytest.approx(0.6)
    assert by["system_prompt"]["diff_vs_sae_latent"] == pytest.approx(0.2)
    assert [r["method"] for r in rows] == ["persona_vector", "system_prompt", "unsteered", "sae_latent"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert by["persona_vector"]["ab_p_matching"] == 0.7 and np.isnan(by["sae_latent"]["ab_p_matching"])


def test_tiny_vocabulary_fixture_words_exist():
    # the CLI tests write trait files from the tiny tokenizer's words; keep them honest
    assert {"secret", "kept", "openly", "help"} <= set(WORDS)


# ---------------------------------------------------------------- end to end on the tiny model

def _tiny_trait(path, n_questions: int = 8, seed: int = 5):
    """A persona_vectors trait file in the tiny tokenizer's words."""
    rng = random.Random(seed)
    data = {"instruction": [{"pos": f"You are helpful . never tell the secret {k} .",
                             "neg": f"You are helpful . always share openly {k} ."} for k in range(2)],
            "questions": [sentence(rng, 5) + f" {i} ?" for i in range(n_questions)],
            "eval_prompt": "Does the reply keep a secret ? {question} {answer}"}
    path.write_text(json.dumps(data))
    return path


def _tiny_ab(n: int, seed: int = 6) -> list[dict]:
    rng = random.Random(seed)
    return [{"question": sentence(rng, 6) + f" {i} ?", "answer_matching_behavior": f"secret kept {i}",
             "answer_not_matching_behavior": f"shared openly {i}"} for i in range(n)]


@pytest.fixture()
def tiny_run(tiny_model_dir, tiny_sae_dir, reference_dir, tmp_path):
    from conftest import dashboard_overrides

    return ["model=hf_local", f"model.path={tiny_model_dir}", "model.device=cpu", "sae=local",
            f"sae.path={tiny_sae_dir}", "finder.n_permutations=200", "finder.specificity=false",
            f"finder.cache_dir={tmp_path / 'finder_cache'}", "steer.n_prompts=4", "steer.max_new_tokens=5",
            "steer.n_bootstrap=100", "steer.coefficients=[0,4]", "peers.max_new_tokens=5",
            "peers.trait_threshold=0", "peers.coherence_threshold=0", "peers.min_pairs=2",
            *dashboard_overrides(reference_dir, tmp_path / "feature_cache")]


def test_a_persona_vectors_trait_file_runs_and_gets_a_card(tiny_run, tmp_path):
    import csv

    from psm_repro.cli import main

    trait = _tiny_trait(tmp_path / "evil.json")
    out = tmp_path / "run"
    assert main(["run", *tiny_run, f"persona_file={trait}", f"hydra.run.dir={out}"]) == 0
    card = (out / "summary.md").read_text()
    assert "imported persona_vectors file" in card and "assistant contrast alone" in card
    assert "## Methods side by side" in card and "persona vector" in card
    assert "CAA vector: **not built**" in card  # a trait file has no A/B items
    with open(out / "methods.csv") as fh:
        methods = {r["method"] for r in csv.DictReader(fh)}
    assert methods == {"sae_latent", "persona_vector", "dense_direction", "random_latent", "system_prompt",
                       "unsteered"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finder"]["assistant_only"] and summary["peers"]["persona_vector"]["kept"] == 8
    assert not summary["steering"]["judge_reliable"] and "**beats**" not in card


def test_a_native_persona_with_peers_gets_the_ab_metric_for_every_method(tiny_run, tmp_path):
    import csv

    import yaml
    from conftest import write_persona

    from psm_repro.cli import main

    path = write_persona(tmp_path)
    data = yaml.safe_load(path.read_text())
    _tiny_trait(tmp_path / "trait.json", n_questions=4)
    data["peers"] = {"trait": "trait.json", "ab_train": _tiny_ab(6), "ab_test": _tiny_ab(5, seed=7)}
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    assert main(["run", *tiny_run, f"persona_file={path}", f"hydra.run.dir={out}"]) == 0
    with open(out / "ab.csv") as fh:
        ab = list(csv.DictReader(fh))
    cells = {(r["method"], float(r["coefficient"])) for r in ab}
    assert cells == {("unsteered", 0.0), ("system_prompt", 0.0)} | {
        (m, 4.0) for m in ("sae_latent", "random_latent", "dense_direction", "persona_vector", "caa_vector")}
    assert all(0 < float(r["p_matching"]) < 1 and r["n"] == "5" for r in ab)
    base = next(float(r["p_matching"]) for r in ab if r["method"] == "unsteered")
    for r in ab:  # paired differences over the same items: their mean is the difference of the means
        assert float(r["diff_vs_unsteered"]) == pytest.approx(float(r["p_matching"]) - base, abs=1e-5)  # CSV rounding
        assert float(r["diff_ci_low"]) <= float(r["diff_vs_unsteered"]) <= float(r["diff_ci_high"])
    card = (out / "summary.md").read_text()
    assert "### A/B: p(answer matching the behaviour)" in card and "CAA vector: 6 A/B items" in card


def test_a_caa_file_finds_latents_but_run_asks_for_eval_prompts(tiny_run, tmp_path, capsys):
    from psm_repro.cli import main

    ab = tmp_path / "syco.json"
    ab.write_text(json.dumps(_tiny_ab(16)))
    assert main(["find", *tiny_run, f"persona_file={ab}", f"hydra.run.dir={tmp_path / 'f'}"]) == 0
    assert "assistant contrast alone" in (tmp_path / "f" / "summary.md").read_text()
    capsys.readouterr()
    assert main(["run", *tiny_run, f"persona_file={ab}", f"hydra.run.dir={tmp_path / 'r'}"]) == 1
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and "has no open-ended eval prompts" in err[0] and "syco.json" in err[0]


def test_a_broken_trait_file_fails_in_one_line_before_the_model_loads(tiny_run, tmp_path, capsys):
    from psm_repro.cli import main

    bad = tmp_path / "evil.json"
    bad.write_text(json.dumps({"instruction": [{"pos": "x"}], "questions": ["a", "b", "c", "d"], "eval_prompt": "e"}))
    args = [a for a in tiny_run if not a.startswith("model.path")] + ["model.path=/nonexistent"]
    assert main(["run", *args, f"persona_file={bad}", f"hydra.run.dir={tmp_path / 'r'}"]) == 1
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and "evil.json: instruction[0]: missing field 'neg'" in err[0]
