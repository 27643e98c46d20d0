#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md in one run on a lent GPU machine (under 8 minutes; installs
# nothing: that machine's python3 has torch and transformers, tokenforge is used from src/):
#   1. the demo benchmark of `make run` (every method and baseline, stdlib-heldout) on --device cuda;
#   2. plain-decoding tokens/s of random-weight Llama 1.1B and 7B shapes in bf16 next to the
#      bandwidth floor (weights read per token / measured device-to-device copy bandwidth).
# Writes to $OUT (default out/gpu): gpu.txt, gpu_bench.log, floor.json, demo/{results.json,
# report.md,speedup.png}. Run from anywhere: OUT=/tmp/gpu benchmarks/gpu_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

run_all() {
    {
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem \
            --format=csv || true
        "$PY" -c 'import platform, torch, transformers, tokenforge
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "transformers", transformers.__version__, "tokenforge", tokenforge.__version__)
print("device", torch.cuda.get_device_name(0))'
    } | tee "$OUT/gpu.txt"

    echo "== 1/2 demo benchmark on cuda"
    SECONDS=0
    timeout 300 "$PY" -c 'from tokenforge.cli import main; main()' bench \
        --model demo --draft-model demo-draft --methods all --dataset stdlib-heldout \
        --limit 10 --max-new-tokens 128 --repeats 2 --device cuda --no-progress \
        --out "$OUT/demo" || echo "!! demo benchmark failed (exit $?)"
    echo "(demo benchmark: ${SECONDS}s)"

    echo "== 2/2 random-weight Llama shapes vs the bandwidth floor (bf16)"
    SECONDS=0
    timeout 150 "$PY" benchmarks/bandwidth_floor.py --shapes 1.1b,7b --device cuda \
        --dtype bfloat16 --new-tokens 256 --out "$OUT/floor.json" \
        || echo "!! bandwidth floor failed (exit $?)"
    echo "(bandwidth floor: ${SECONDS}s)"
}

run_all 2>&1 | tee "$OUT/gpu_bench.log"
