#!/usr/bin/env bash
# The "Code tasks" figures of BENCHMARKS.md: every decoder of `tokenforge eval-code` on
#   1. lab-heldout (200 tasks) with demo-coder;
#   2. HumanEval (164 tasks) with demo-coder and with demo.
# greedy, sample (T=0.8, n=10: pass@1 and pass@10), adadec (the model's fitted threshold) on every
# task; filter (sampling + public-test filtering) and pg-td at 8, 16 and 32 programs on every
# lab task and on the first $HE_SEARCH HumanEval tasks (PG-TD on HumanEval is minutes per task
# here: every rollout runs to the token budget).
# Runs the three sets two at a time (2 cores, one torch thread each). Writes $OUT/<set>/
# (results.json, tasks.jsonl, report.md, pass_vs_compute.png) and $OUT/*.log. About 20 minutes
# on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/code_tasks}"
HE_SEARCH="${HE_SEARCH:-20}"
TF="${TOKENFORGE:-.venv/bin/tokenforge}"
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
common=(--device cpu -n 10 --budgets 8,16,32 --temperature 0.8 --workers 1)

lab() {
  "$TF" eval-code --model demo-coder --tasks lab-heldout --decoder greedy,sample,filter,adadec,pg-td \
    "${common[@]}" --out "$OUT/lab-heldout-demo-coder" > "$OUT/lab-heldout-demo-coder.log" 2>&1
}
humaneval() {  # $1 = model
  "$TF" eval-code --model "$1" --tasks humaneval --decoder greedy,sample,adadec \
    "${common[@]}" --out "$OUT/humaneval-$1" > "$OUT/humaneval-$1.log" 2>&1
  "$TF" eval-code --model "$1" --tasks humaneval --decoder filter,pg-td --limit "$HE_SEARCH" \
    "${common[@]}" --out "$OUT/humaneval-$1-search" > "$OUT/humaneval-$1-search.log" 2>&1
}

lab &
humaneval demo-coder
wait
humaneval demo
echo "done: $OUT"
