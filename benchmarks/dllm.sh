#!/usr/bin/env bash
# The "Diffusion decoding" figures of BENCHMARKS.md: every diffusion decoder on demo-dllm, with
# settings on either side of each default, against llada at one token per step (the reference),
# plus the AR demo with vanilla and token-recycling as two more points.
#   stdlib-heldout (10 prompts) at 64 and 256 positions; humaneval (10 prompts) at 64.
# One torch thread; the runs go one after another (timing). Writes $OUT/<set>-<length>/
# (results.json, report.md, speed_quality.png).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/dllm}"
LIMIT="${LIMIT:-10}"
TF="${TOKENFORGE:-.venv/bin/tokenforge}"
export OMP_NUM_THREADS=1
SETTINGS="llada:tokens_per_step=2,llada:tokens_per_step=4,fast-dllm:cache=none,fast-dllm:cache=prefix,fast-dllm,fast-dllm:threshold=0.7,fast-dllm:threshold=0.5,fast-dllm:threshold=0.3,credit,credit:threshold=0.7,localleap,localleap:anchor=0.8:relaxed=0.6,elastic-cache,elastic-cache:gamma=0.99,learn2pd,learn2pd:threshold=0.7,learn2pd:threshold=0.5,vanilla,token-recycling"
mkdir -p "$OUT"
for run in "stdlib-heldout 64" "stdlib-heldout 256" "humaneval 64"; do
  set -- $run
  "$TF" bench --model demo-dllm --methods "$SETTINGS" --dataset "$1" --limit "$LIMIT" \
    --max-new-tokens "$2" --device cpu --out "$OUT/$1-$2" 2>"$OUT/$1-$2.log"
done
echo "done: $OUT"
