#!/usr/bin/env bash
# Install every direct dependency at the floor pyproject.toml declares, in a scratch venv, and run the fast
# tests there. Usage: scripts/check_floors.sh [venv dir]   (default /tmp/psm_repro_floors)
# torch is the exception: the floor is TransformerLens's own (>=2.6), but older torch releases are multi-GB
# CUDA downloads on CPU machines, so the torch the Makefile pins is used (override with TORCH_SPEC=...).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/psm_repro_floors}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
python3 - > "$VENV/floors.txt" <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for d in deps:
    name = re.split(r"[<>=~!; ]", d, maxsplit=1)[0]
    if name == "torch":
        continue
    floor = re.search(r"(?:>=|~=|==)\s*([0-9][^,;\s]*)", d)
    print(f"{name}=={floor.group(1)}" if floor else name)
PY
cat "$VENV/floors.txt"
"$VENV/bin/python" -m pip install -q -r "$VENV/floors.txt" -e ".[test]"
"$VENV/bin/python" -m pip list 2>/dev/null | grep -i -E "^(torch|transformers|transformer-lens|sae-lens|datasets|peft|sentence-transformers|scipy|numpy|statsmodels|scikit-learn|hydra-core|gguf|safetensors|matplotlib|tqdm|pyyaml) "
"$VENV/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider "${@:2}"
