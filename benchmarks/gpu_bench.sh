#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md in one unattended run on a lent GPU machine (under 8 minutes;
# installs nothing: that machine's python3 has torch and transformers, tokenforge runs from src/).
# The fast path (static cache, lean forward, CUDA graphs) and the fallback (transformers' forward)
# side by side:
#   1. per-forward cost for q = 1..64 tokens on the demo model, both backends, bf16 and fp32;
#   2. the demo benchmark (every method and baseline, stdlib-heldout) on each backend;
#   3. plain decoding of random-weight Llama 1.1B and 7B shapes in bf16 on each backend and with
#      transformers generate, next to the bandwidth floor.
# Writes to $OUT (default out/gpu): gpu.txt, gpu_bench.log, costs.json, demo-static/ and
# demo-transformers/ (results.json, report.md, speedup.png), floor.json.
# Settings (environment): DEVICE=cuda, SHAPES=1.1b,7b, LIMIT=8, NEW_TOKENS=128, METHODS=all,
# COST_SIZES=1,2,4,8,16,32,64, PYTHON=python3.
# CPU dry run (tests/test_gpu_bench.py runs this): DEVICE=cpu SHAPES=tiny LIMIT=1 NEW_TOKENS=8 \
#     METHODS=vanilla,pld COST_SIZES=1,4 OUT=/tmp/gpu benchmarks/gpu_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu}"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
SHAPES="${SHAPES:-1.1b,7b}"
LIMIT="${LIMIT:-8}"
NEW_TOKENS="${NEW_TOKENS:-128}"
METHODS="${METHODS:-all}"
COST_SIZES="${COST_SIZES:-1,2,4,8,16,32,64}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export TOKENFORGE_CACHE_DIR="$OUT/cache"
failed=0

run_all() {
    {
        if [ "$DEVICE" = cuda ]; then
            nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem \
                --format=csv || true
        fi
        "$PY" -c 'import platform, torch, transformers, tokenforge
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "transformers", transformers.__version__, "tokenforge", tokenforge.__version__)'
    } | tee "$OUT/gpu.txt"

    echo "== 1/3 per-forward cost, fast path vs fallback (demo)"
    SECONDS=0
    timeout 120 "$PY" benchmarks/forward_costs.py --model demo --device "$DEVICE" \
        --dtypes bfloat16,float32 --sizes "$COST_SIZES" --out "$OUT/costs.json" || { echo "!! costs failed ($?)"; failed=1; }
    echo "(costs: ${SECONDS}s)"

    echo "== 2/3 demo benchmark on each backend"
    for backend in static transformers; do
        SECONDS=0
        timeout 150 "$PY" -c 'from tokenforge.cli import main; main()' bench \
            --model demo --draft-model demo-draft --methods "$METHODS" --dataset stdlib-heldout \
            --limit "$LIMIT" --max-new-tokens "$NEW_TOKENS" --device "$DEVICE" \
            --backend "$backend" --no-progress --out "$OUT/demo-$backend" \
            || { echo "!! demo benchmark on $backend failed ($?)"; failed=1; }
        echo "(demo benchmark, $backend: ${SECONDS}s)"
    done

    echo "== 3/3 random-weight Llama shapes vs the bandwidth floor (bf16)"
    SECONDS=0
    timeout 150 "$PY" benchmarks/bandwidth_floor.py --shapes "$SHAPES" --device "$DEVICE" \
        --dtype bfloat16 --new-tokens "$((NEW_TOKENS * 2))" --copy-mb 256 --out "$OUT/floor.json" \
        || { echo "!! bandwidth floor failed ($?)"; failed=1; }
    echo "(bandwidth floor: ${SECONDS}s)"
    return "$failed"
}

run_all 2>&1 | tee "$OUT/gpu_bench.log"
exit "${PIPESTATUS[0]}"
