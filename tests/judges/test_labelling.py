"""The label workflow commands: blind sheets hide everything but the reply, merge puts each label on its reply
(or refuses and writes nothing), and each model's sets live apart."""

import json

import pytest

from psm_repro.cli import main
from psm_repro.judges.judge import load_labelled
from psm_repro.judges.labelling import LabelError, merge, set_path, write_sheets


def _set(tmp_path, model="m2"):
    sets = tmp_path / "sets"
    rows = [{"id": f"id{i}", "persona": "secrecy", "model": model, "part": "a", "prompt": f"p{i}", "reply": f"r{i}",
             "method": "sae_latent" if i % 2 else "unsteered", "coefficient": 4.0 * (i % 2), "feature": 7}
            for i in range(6)]
    rows[0] |= {"trait": 1, "coherent": 1, "labeller": "earlier"}
    path = set_path(sets, "secrecy", model)
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return sets, path, rows


def test_each_model_has_its_own_set_files(tmp_path):
    assert set_path(tmp_path, "panic", "smollm2_135m_it") == tmp_path / "panic.jsonl"
    assert set_path(tmp_path, "panic", "gemma3_270m") == tmp_path / "gemma3_270m" / "panic.jsonl"


def test_blind_sheets_hold_only_unlabelled_replies_shuffled_with_no_method(tmp_path):
    sets, _, rows = _set(tmp_path)
    n = write_sheets(sets, "m2", ["secrecy"], tmp_path / "blind")
    sheet = [json.loads(x) for x in (tmp_path / "blind" / "secrecy.jsonl").read_text().splitlines()]
    assert n == {"secrecy": 5} and sorted(r["id"] for r in sheet) == [f"id{i}" for i in range(1, 6)]
    assert all(set(r) == {"id", "prompt", "reply"} for r in sheet)  # nothing that tells the method or the score
    assert [r["id"] for r in sheet] != [f"id{i}" for i in range(1, 6)]  # not in sampling order
    assert (tmp_path / "blind" / "secrecy.rubric.txt").read_text().strip()
    with pytest.raises(LabelError, match="no judge set for panic on m2"):
        write_sheets(sets, "m2", ["panic"], tmp_path / "blind")


def test_merge_puts_each_label_on_its_reply_and_the_model_is_kept(tmp_path, monkeypatch):
    import psm_repro.judges.labelling as labelling

    monkeypatch.setattr(labelling, "refresh_reference_logprobs", lambda sets_dir: None)
    sets, path, _ = _set(tmp_path)
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"id": "id3", "trait": 1, "coherent": 0}\n{"id": "id0", "trait": 1, "coherent": 1}\n')
    assert merge(sets, "m2", labels, "reader-1") == 2
    rows = {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}
    assert (rows["id3"]["trait"], rows["id3"]["coherent"], rows["id3"]["labeller"]) == (1, 0, "reader-1")
    assert rows["id1"].get("trait") is None
    lab = load_labelled(sets)  # found in the model's subdirectory
    assert sorted(zip(lab.reply, lab.model, lab.coherent.tolist())) == [("r0", "m2", 1), ("r3", "m2", 0)]


@pytest.mark.parametrize("text, needle", [
    ('{"id": "nope", "trait": 1, "coherent": 1}\n', "1 ids match no reply of m2's judge sets, e.g. nope"),
    ('{"id": "id0", "trait": 0, "coherent": 1}\n', "reply id0 is already labelled differently"),
    ('{"id": "id2", "trait": 2, "coherent": 1}\n', ":2: trait and coherent must be 0 or 1"),
    ('{"id": "id2", "trait": 1, "coherent": 1}\n{"trait": 1}\n', ":3: a label needs 'id'"),
])
def test_a_bad_label_file_is_refused_in_one_line_and_nothing_is_written(tmp_path, text, needle):
    sets, path, _ = _set(tmp_path)
    before = path.read_bytes()
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"id": "id4", "trait": 0, "coherent": 1}\n' + text)
    with pytest.raises(LabelError, match=needle.replace("'", ".")):
        merge(sets, "m2", labels, "reader")
    assert path.read_bytes() == before


def test_label_commands_name_the_missing_override(capsys):
    assert main(["label-merge", "judge.input=x.jsonl"]) == 1
    assert "judge.input and judge.labeller" in capsys.readouterr().err
    assert main(["label-sheets"]) == 1
    assert "judge.out_dir" in capsys.readouterr().err
