import pytest

from psm_repro.core.outputs import RunDirError, claim_run_dir, read_csv, write_csv, write_text


def test_claim_run_dir_refuses_a_directory_with_results(tmp_path):
    claim_run_dir(tmp_path / "new")
    (tmp_path / "new" / "features.csv").write_text("x")
    with pytest.raises(RunDirError, match="already holds results"):
        claim_run_dir(tmp_path / "new")


def test_write_text_is_atomic_when_the_writer_fails(tmp_path, monkeypatch):
    path = tmp_path / "table.csv"
    write_text(path, "old\n")

    import os
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        write_text(path, "new\n")
    monkeypatch.setattr(os, "replace", real_replace)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]  # no temp file left behind


def test_csv_round_trip(tmp_path):
    write_csv(tmp_path / "t.csv", [{"a": 1, "b": 0.123456789}], ["a", "b"])
    assert read_csv(tmp_path / "t.csv") == [{"a": "1", "b": "0.123457"}]


ADVERSARIAL = ["\r", "a\rb", "\r\n", "x\ny", 'say "hi", ok', "\t", "🙂 émoji", "⏎   ", "a\x00b", '"', ",", " ",
               "\u2028", "nan", "-1e5", "=cmd()"]
"""Token strings a 262k vocabulary really has: bare carriage returns, NUL, quotes, separators, a line
separator, and text pandas would happily read as a number or a missing value."""


@pytest.mark.parametrize("token", ADVERSARIAL)
def test_csv_with_any_token_text_reads_back_to_the_same_rows_with_pandas_and_csv(tmp_path, token):
    """A latent's promoted token can be any string: a bare "\\r" once split features.csv into a junk row."""
    import csv

    import pandas as pd

    from psm_repro.core.outputs import write_csv

    rows = [{"rank": 1, "token": token, "score": 0.5}, {"rank": 2, "token": "plain", "score": 1.25}]
    write_csv(tmp_path / "f.csv", rows, ["rank", "token", "score"])
    with open(tmp_path / "f.csv", newline="") as fh:
        back = list(csv.DictReader(fh))
    assert [r["token"] for r in back] == [token, "plain"] and [r["rank"] for r in back] == ["1", "2"]
    frame = pd.read_csv(tmp_path / "f.csv", keep_default_na=False)
    assert frame["token"].tolist() == [token, "plain"] and frame["rank"].tolist() == [1, 2]
    assert frame["score"].tolist() == [0.5, 1.25]


def test_an_output_directory_that_cannot_be_made_fails_in_one_line_before_the_model_loads(tmp_path, capsys):
    from psm_repro.cli import main

    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory\n")
    with pytest.raises(RunDirError, match=r"a_file/run: cannot be created or written \(Not a directory\)"):
        claim_run_dir(blocker / "run")
    # through the command, with a model path that does not exist: the directory fails first, in one line
    assert main(["find", "model=hf_local", "model.path=/nonexistent/model", f"hydra.run.dir={blocker / 'run'}"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be created or written" in err and blocker.read_text()


@pytest.mark.parametrize("token", ADVERSARIAL)
def test_jsonl_with_any_token_text_reads_back_line_for_line(tmp_path, token):
    from psm_repro.core.outputs import read_jsonl, write_jsonl

    rows = [{"token": token, "n": 1}, {"token": "plain", "n": 2.5}]
    write_jsonl(tmp_path / "f.jsonl", rows)
    assert [r for _, r in read_jsonl(tmp_path / "f.jsonl")] == rows
    assert len((tmp_path / "f.jsonl").read_bytes().split(b"\n")) == 3  # one line per row, whatever the text


def test_written_files_get_the_permissions_open_would_give_not_the_temp_files_0600(tmp_path):
    import os

    from psm_repro.core.outputs import write_bytes, write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.md", "é\n")
        write_bytes(tmp_path / "b.bin", b"\x00")
        with open(tmp_path / "c.txt", "w") as fh:  # the reference: a plain open()
            fh.write("x")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes["a.md"] == modes["b.bin"] == modes["c.txt"] == 0o644
    assert (tmp_path / "a.md").read_bytes() == "é\n".encode()
