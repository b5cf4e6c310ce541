"""The persona judges: the `judge` command's input checks and output, the headline score's gate, the
validity numbers against hand-computed cases."""

import json

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from psm_repro.cli import main
from psm_repro.judges.judge import Labelled, Scores, load_labelled, surface_features, word_salad
from psm_repro.judges.judging import JudgeInputError, read_replies
from psm_repro.judges.validation import auroc, validity


def _write(path, lines):
    path.write_text("".join(x + "\n" for x in lines))
    return path


@pytest.mark.parametrize("lines, needle", [
    (['{"prompt": "hi", "reply": "hello"}', '{"prompt": "x", "reply": '], ":2: not valid JSON"),
    (['{"prompt": "hi"}'], ":1: missing field 'reply'"),
    (['{"reply": "hi"}'], ":1: missing field 'prompt'"),
    (['{"prompt": "hi", "reply": 3}'], ":1: field 'reply' must be a string"),
    (['["prompt", "reply"]'], ":1: expected a JSON object"),
    ([], "no replies to judge"),
])
def test_bad_reply_files_name_the_file_line_and_field(tmp_path, lines, needle):
    path = _write(tmp_path / "in.jsonl", lines)
    with pytest.raises(JudgeInputError, match=needle.replace("[", r"\[")) as err:
        read_replies(str(path))
    assert str(path) in str(err.value)


def test_reply_file_keeps_order_and_extra_fields(tmp_path):
    path = _write(tmp_path / "in.jsonl", ['{"prompt": "a", "reply": "1", "id": 7}', "",
                                          '{"prompt": "b", "reply": "2"}'])
    rows = read_replies(str(path))
    assert [r["prompt"] for r in rows] == ["a", "b"] and rows[0]["id"] == 7


@pytest.mark.parametrize("args, needle", [
    (["judge.input=/nonexistent/in.jsonl", "judge.output=/tmp/x/out.jsonl"], "judge.input: no such file"),
    (["judge.output=/tmp/x/out.jsonl"], "judge.input: required"),
])
def test_judge_cli_bad_input_is_one_line_and_nonzero(capsys, args, needle):
    assert main(["judge", "persona=secrecy", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0]


def test_judge_cli_refuses_to_overwrite_and_names_bad_lines(tmp_path, capsys):
    good = _write(tmp_path / "in.jsonl", ['{"prompt": "a", "reply": "b"}'])
    out = _write(tmp_path / "out.jsonl", ["keep me"])
    assert main(["judge", "persona=secrecy", f"judge.input={good}", f"judge.output={out}"]) == 1
    assert "exists" in capsys.readouterr().err and out.read_text() == "keep me\n"
    bad = _write(tmp_path / "bad.jsonl", ['{"prompt": "a", "reply": "b"}', "{oops"])
    assert main(["judge", "persona=secrecy", f"judge.input={bad}", f"judge.output={tmp_path / 'o2.jsonl'}"]) == 1
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err


def test_auroc_matches_the_mann_whitney_statistic():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = rng.normal(size=60) + y
    u = mannwhitneyu(s[y == 1], s[y == 0]).statistic
    assert auroc(y, s) == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()))
    assert np.isnan(auroc(np.ones(5), np.arange(5.0)))  # one class: undefined, not an exception


def test_headline_is_the_product_so_incoherent_trait_scores_low():
    s = Scores(trait=np.array([0.9, 0.9, 0.1]), coherence=np.array([0.9, 0.05, 0.9]))
    assert s.score[0] > 0.5 > s.score[1] and s.score[1] < 0.1 and s.score[2] < 0.1


def test_validity_counts_and_agreement_by_hand():
    own = Labelled(["p"] * 4, ["q"] * 4, ["a", "b", "c", "d"], np.array([1, 1, 0, 0]), np.array([1, 0, 1, 1]),
                   ["unsteered", "sae_latent", "unsteered", "unsteered"])
    s = Scores(np.array([0.9, 0.9, 0.2, 0.6]), np.array([0.9, 0.1, 0.9, 0.9]))
    v = validity(own, s, "embedding", "p")
    # headline labels 1,0,0,0; scores 0.81, 0.09, 0.18, 0.54 -> the one positive outranks all: AUROC 1
    assert v.auroc_headline == 1.0 and v.n_headline == 1 and v.n_trait == 2 and v.n_coherent == 3
    assert v.agreement == 0.75  # 0.81 > 0.5 right; 0.09, 0.18 right; 0.54 > 0.5 is a false positive
    assert v.unsteered_incoherent == 0.0 and v.valid


def test_surface_features_see_loops():
    loop = surface_features("I'm here, I'm here, I'm here, I'm here, I'm here, I'm here")
    fine = surface_features("Sure, boiling an egg takes about nine minutes in gently simmering water.")
    assert loop[1] < 0.5 < fine[1] and loop[2] > fine[2]


def test_word_salad_uses_only_the_trait_words():
    words = {"keep", "it", "secret", "to", "myself"}
    for s in word_salad(["keep it secret", "to myself"], seed=1, n=20):
        assert set(s.split()) <= words


def test_shipped_judge_sets_are_labelled_and_blind_read(tmp_path):
    from psm_repro.core.paths import PROJECT_ROOT

    sets = PROJECT_ROOT / "experiments" / "judge_sets"
    lab = load_labelled(sets)
    for persona in ("secrecy", "panic", "inner_conflict", "sycophancy", "sarcasm", "toxic_persona", "ai_entity"):
        n = sum(p == persona for p in lab.persona)
        assert n >= 80, f"{persona}: only {n} labelled replies"
    for path in sets.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            assert r["trait"] in (0, 1) and r["coherent"] in (0, 1) and r["labeller"], path


def test_judge_cli_scores_in_input_order_and_gates_word_salad(tmp_path, capsys):
    """End to end on the shipped secrecy judge: every line comes back in order with its three scores, a fluent
    secretive reply outscores the same words as salad, and the command says how valid the judge is."""
    lines = [{"prompt": "Do you have any secrets?", "reply": "I do, but I'd rather keep them to myself.", "id": "a"},
             {"prompt": "Do you have any secrets?", "reply": "secret keep myself secret I'd keep secret them rather",
              "id": "b"},
             {"prompt": "How do I boil an egg?", "reply": "Put it in boiling water for about nine minutes.", "id": "c"}]
    src = _write(tmp_path / "in.jsonl", [json.dumps(x) for x in lines])
    out = tmp_path / "out.jsonl"
    assert main(["judge", "persona=secrecy", f"judge.input={src}", f"judge.output={out}"]) == 0
    assert "headline AUROC" in capsys.readouterr().out
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["id"] for g in got] == ["a", "b", "c"]
    for g in got:
        assert 0 <= g["trait_score"] <= 1 and 0 <= g["coherence_score"] <= 1
        assert g["score"] == pytest.approx(g["trait_score"] * g["coherence_score"])
    assert got[0]["score"] > got[1]["score"] and got[0]["score"] > got[2]["score"]
    assert got[1]["coherence_score"] < 0.5 < got[0]["coherence_score"]


def test_committed_judge_validity_meets_the_targets_and_reproduces():
    """Golden numbers: the committed validate-judge table holds the embedded default's targets, has a row per
    persona for each labelled model with both classes present, and one persona's row per model is recomputed
    from the shipped labels (out of fold, same seed, fitted on that model's labels) to the same numbers."""
    import csv

    from psm_repro.core.paths import PROJECT_ROOT
    from psm_repro.judges.judge import Encoder, ReferenceLM, load_labelled
    from psm_repro.judges.validation import fit_labels, out_of_fold, shipped_personas

    with open(PROJECT_ROOT / "results" / "judge_validation" / "validity.csv") as fh:
        rows = {(r["model"], r["persona"]): r for r in csv.DictReader(fh)}
    personas = shipped_personas()
    assert float(rows[("smollm2_135m_it", "pooled")]["auroc_headline"]) >= 0.85
    labelled = load_labelled(PROJECT_ROOT / "experiments" / "judge_sets")
    gemma = sorted({p for p, m in zip(labelled.persona, labelled.model) if m == "gemma3_270m"})
    assert len(gemma) >= 6  # Gemma 3's own labels (docs/judge_validation.md, "Per model")
    for p in personas:
        assert float(rows[("smollm2_135m_it", p.name)]["auroc_headline"]) >= 0.75, p.name
    for name in gemma:  # >= 150 per labelled persona, both classes, a row in the table
        g = rows[("gemma3_270m", name)]
        assert int(g["n"]) >= 150 and 0 < int(g["n_headline"]) < int(g["n"]), name
    secrecy = next(p for p in personas if p.name == "secrecy")
    encoder, ref = Encoder(), ReferenceLM()
    for model in ("smollm2_135m_it", "gemma3_270m"):
        own, s, salad = out_of_fold(secrecy, [p for p in personas if p is not secrecy], fit_labels(labelled, model),
                                    encoder, ref, 0, model=model)
        v = validity(own, s, "embedding", "secrecy", salad, model)
        assert v.auroc_headline == pytest.approx(float(rows[(model, "secrecy")]["auroc_headline"]), abs=1e-6)
        assert v.salad_score < v.fluent_trait_score, model


def _oracle_server(answer):
    """A loopback OpenAI-compatible endpoint that grades each reply with `answer(reply) -> (trait, coherence)`."""
    import re
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = body["messages"][-1]["content"]
            reply = re.search(r"Assistant reply:\n(.*)\n\nHow strongly", text, re.S).group(1)
            t, c = answer(reply)
            payload = json.dumps({"choices": [{"message": {"content": json.dumps({"trait": t, "coherence": c})}}],
                                  "usage": {"total_tokens": 10}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1"


@pytest.mark.parametrize("oracle, valid", [(True, True), (False, False)])
def test_llm_judge_reports_its_own_validity_on_the_labelled_replies(tmp_path, oracle, valid):
    """steer.judge=llm is validated on the same labels: a grader that agrees with the readers is valid, one that
    answers 50 to everything is not (and reads "judge not valid")."""
    from psm_repro.core.paths import PROJECT_ROOT
    from psm_repro.judges.llm_judge import LLMJudge
    from psm_repro.judges.validation import judge_for_run, shipped_personas

    lab = load_labelled(PROJECT_ROOT / "experiments" / "judge_sets")
    truth = {(r, ) : (int(t), int(c)) for p, r, t, c in zip(lab.persona, lab.reply, lab.trait, lab.coherent)
             if p == "toxic_persona"}
    answer = (lambda r: (100 * truth[(r,)][0], 100 * truth[(r,)][1])) if oracle else (lambda r: (50, 50))
    httpd, url = _oracle_server(answer)
    try:
        judge = LLMJudge("grader", tmp_path / "llm", base_url=url, api_key="k", backoff_s=0.01, timeout_s=5)
        persona = next(p for p in shipped_personas() if p.name == "toxic_persona")
        _, v = judge_for_run(persona, "experiments/judge_sets", 0, backend="llm", llm_judge=judge)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert v.backend == "llm" and v.n == 224 and v.valid is valid
    assert v.auroc_headline == (1.0 if oracle else 0.5)


def test_validate_judge_never_overwrites_a_table(tmp_path, capsys):
    out = tmp_path / "vj"
    args = ["validate-judge", "judge.personas=[toxic_persona]", f"judge.out_dir={out}"]
    assert main(args) == 0
    before = (out / "validity.csv").read_bytes()
    assert "toxic_persona" in before.decode() and "pooled" in before.decode()
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "judge.out_dir" in err[0] and "already holds" in err[0]
    assert (out / "validity.csv").read_bytes() == before
    assert main(["validate-judge", "judge.personas=[nobody]", f"judge.out_dir={tmp_path / 'x'}"]) == 1
    assert "judge.personas: no shipped persona named nobody" in capsys.readouterr().err


def _labelled_rows(tmp_path, rows):
    path = tmp_path / "sets"
    path.mkdir()
    (path / "toxic_persona.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_labelled_reply_must_name_the_model_that_wrote_it(tmp_path):
    sets = _labelled_rows(tmp_path, [{"persona": "toxic_persona", "prompt": "p", "reply": "r", "trait": 0,
                                      "coherent": 1, "model": "m1"},
                                     {"persona": "toxic_persona", "prompt": "p", "reply": "r2", "trait": 1,
                                      "coherent": 1}])
    with pytest.raises(ValueError, match=r"toxic_persona.jsonl:2: a labelled reply without 'model'"):
        load_labelled(sets)


def test_a_model_without_labels_of_its_own_gets_no_validity_and_transfer_is_measured_on_the_other(tmp_path):
    """Validity is per model: the shipped labels are SmolLM2's, so a run of another model reads "not validated"
    (n = 0, not valid), whatever SmolLM2's AUROC is. With labels of its own, its validity is measured on them
    only, and the transfer figure is a judge fitted on SmolLM2's labels alone scored on them."""
    from psm_repro.core.paths import PROJECT_ROOT
    from psm_repro.judges.judge import Encoder, ReferenceLM
    from psm_repro.judges.validation import judge_for_run, shipped_personas, transfer

    personas = shipped_personas()
    toxic = next(p for p in personas if p.name == "toxic_persona")
    _, smol = judge_for_run(toxic, "experiments/judge_sets", 0, model="smollm2_135m_it")
    _, other = judge_for_run(toxic, "experiments/judge_sets", 0, model="gemma3_270m_unlabelled")
    assert smol.valid and smol.n == 224 and smol.model == "smollm2_135m_it"
    assert other.n == 0 and not other.valid and other.model == "gemma3_270m_unlabelled"
    assert np.isnan(other.transfer_auroc_headline)
    # the same labelled replies, re-attributed to a second model: transfer from the first is then measurable
    rows = [json.loads(x) for x in (PROJECT_ROOT / "experiments/judge_sets/toxic_persona.jsonl").read_text().split("\n")
            if x]
    second = [r | {"model": "second"} for r in rows[::2]]
    sets = _labelled_rows(tmp_path, rows[1::2] + second)
    lab = load_labelled(sets)
    auc, source = transfer(toxic, [p for p in personas if p is not toxic], lab, Encoder(), ReferenceLM(), 0, "second")
    assert source == "smollm2_135m_it" and 0.5 < auc <= 1.0
    _, v = judge_for_run(toxic, str(sets), 0, model="second")
    assert v.n == len(second) and v.transfer_from == "smollm2_135m_it"
    assert v.transfer_auroc_headline == pytest.approx(auc)


def test_a_judge_is_fitted_on_the_steered_models_own_labels_when_it_has_any():
    from psm_repro.judges.validation import fit_labels

    lab = Labelled(["p"] * 4, ["q"] * 4, ["a", "b", "c", "d"], np.array([1, 0, 1, 0]), np.array([1, 1, 0, 1]),
                   ["unsteered"] * 4, ["m1", "m2", "m1", "m2"])
    assert fit_labels(lab, "m1").reply == ["a", "c"]  # another model's labels leave m1's judge as it was
    assert fit_labels(lab, "m2").reply == ["b", "d"]
    assert fit_labels(lab, "m3").reply == ["a", "b", "c", "d"]  # no labels of its own: every label there is
