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
