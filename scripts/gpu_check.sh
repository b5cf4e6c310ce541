#!/usr/bin/env bash
# Smoke test of the CUDA path in a few minutes: find + steer on one GPU in bfloat16, then a short bench.
#
#   scripts/gpu_check.sh                        # the embedded default (SmolLM2-135M-Instruct + committed SAE)
#   scripts/gpu_check.sh model=gemma2_2b_it sae=gemmascope_2b_res_l12_16k   # any model + SAE (Hub access)
#
# Outputs go to $GPU_CHECK_OUT (default gpu_check/<timestamp>), never into results/.
# The last line says PASS or names the step that failed.
set -uo pipefail
PY=${PYTHON:-python}
OUT=${GPU_CHECK_OUT:-gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}
mkdir -p "$OUT"
COMMON=(model.device=cuda model.dtype=bfloat16 "$@")

step() {  # step NAME CMD...: run, time, keep the log, stop at the first failure
    local name=$1; shift
    local t0=$SECONDS
    echo "== $name: $*"
    if "$@" 2>&1 | tee "$OUT/$name.log"; then
        echo "== $name: ok in $((SECONDS - t0)) s"
    else
        echo "== $name: FAILED after $((SECONDS - t0)) s (log: $OUT/$name.log)"; echo "FAIL at $name"; exit 1
    fi
}

step device $PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.cuda.get_device_name(0), 'torch', torch.__version__, \
'free GiB %.1f' % (torch.cuda.mem_get_info()[0] / 2**30))"
step plan $PY -m psm_repro run plan=true persona=secrecy "${COMMON[@]}"
step find $PY -m psm_repro find persona=secrecy "${COMMON[@]}" hydra.run.dir="$OUT/find"
step steer $PY -m psm_repro steer persona=secrecy steer.max_new_tokens=24 "${COMMON[@]}" hydra.run.dir="$OUT/steer"
step bench $PY -m psm_repro bench bench.end_to_end=false bench.scan_batch=64 bench.gen_batch=64 bench.n_texts=256 \
    "${COMMON[@]}" bench.out_dir="$OUT/bench" hydra.run.dir="$OUT/bench_run"
echo "PASS ($OUT)"
