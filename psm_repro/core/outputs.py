"""Run directories, atomic file writes and the manifest that sits beside every table."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

PACKAGES = ["torch", "transformers", "sae-lens", "transformer-lens", "hydra-core", "datasets", "gguf"]


class RunDirError(RuntimeError):
    """The run directory already holds results; runs never overwrite earlier results."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    """Write a file atomically: readers see the old file or the new one, never half of one."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically (a temporary file beside it, then a rename), with the usual permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            os.fchmod(fh.fileno(), 0o666 & ~_umask())  # what open() gives; mkstemp's file is 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_input_text(path: Path, error: type[Exception] = ValueError) -> str:
    """A data file as people write it: UTF-8 with or without a byte-order mark, LF or CRLF line ends (read as
    LF). Bytes that are not UTF-8 raise `error` naming file:line, never a traceback or mojibake."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not valid UTF-8 (byte 0x{data[err.start]:02x}); save the file as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_jsonl(path: Path, error: type[Exception] = ValueError) -> list[tuple[int, object]]:
    """(line number, parsed value) for every non-blank line; a bad line raises `error` naming file and line."""
    out = []
    for n, line in enumerate(read_input_text(path, error).split("\n"), 1):
        if line.strip():
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as err:
                raise error(f"{path}:{n}: not valid JSON ({err.msg})") from None
    return out


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    # minimal quoting quotes only the characters of the line terminator ("\n"): a token string holding "\r" would
    # be written bare and read back as a broken row, so such a row is written fully quoted
    quoted = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n",
                            quoting=csv.QUOTE_NONNUMERIC)
    writer.writeheader()
    for row in rows:
        values = {k: _fmt(row.get(k)) for k in columns}
        bare_cr = any(isinstance(v, str) and "\r" in v for v in values.values())
        (quoted if bare_cr else writer).writerow(values)
    write_text(path, buf.getvalue())


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


RESULT_FILES = ("features.csv", "steering.csv", "summary.md", "validity.csv")


def claim_run_dir(out_dir: Path) -> Path:
    """Make sure `out_dir` holds no earlier results; refuse rather than overwrite them."""
    out_dir = Path(out_dir)
    taken = [f for f in RESULT_FILES if (out_dir / f).exists()]
    if taken:
        raise RunDirError(f"{out_dir} already holds results ({', '.join(taken)}); choose a new hydra.run.dir")
    try:  # created and writable now, before any model loads, or one line naming the directory
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write_check_"):
            pass
    except OSError as err:
        raise RunDirError(f"{out_dir}: cannot be created or written ({err.strerror or err}); choose another "
                          "hydra.run.dir") from None
    return out_dir


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def manifest(config: dict, seed: int, data_files: list[Path], root: Path) -> dict:
    """Config, seed, package versions, git commit and data-file hashes for one run."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "config": config,
        "seed": seed,
        "versions": versions,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "git_commit": git_commit(root),
        "data_files": {str(Path(p).relative_to(root) if Path(p).is_relative_to(root) else p): file_sha256(p)
                       for p in data_files},
    }
