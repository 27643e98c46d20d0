"""Wall time of a one-off `tokenforge generate`, in fresh processes, per method.

A new process pays for importing, loading the model and, for token-recycling's tree_size=auto,
its calibration: measured once per (model, device, dtype, backend) and then read from the user
cache. This runs `tokenforge generate --model demo --method M PROMPT` `--runs` times per method
in fresh processes, against a fresh cache folder, and reports the first run (which calibrates)
apart from the median of the others, with the tokens/s each run reported for its generation.

    python benchmarks/one_off_generate.py --methods vanilla,token-recycling --runs 5
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time


def run_once(method: str, prompt: str, new_tokens: int, cache: str) -> tuple[float, float]:
    """(wall seconds of the process, tokens/s the generation reported)."""
    env = {**os.environ, "TOKENFORGE_CACHE_DIR": cache, "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tokenforge", "generate", "--model", "demo",
                           "--method", method, "--max-new-tokens", str(new_tokens), "--device",
                           "cpu", prompt], env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    rate = float(re.search(r"\(([\d.]+) tok/s\)", proc.stderr).group(1))
    return wall, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="vanilla,token-recycling")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt", default="def fib(n):")
    args = parser.parse_args()
    print(f"`tokenforge generate --model demo --max-new-tokens {args.new_tokens} "
          f"{args.prompt!r}`, fresh processes, one thread, a fresh calibration cache")
    print("| method | first run: wall s | first run: tok/s | later runs: wall s (median) | "
          "later runs: tok/s (median) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as cache:
        for method in args.methods.split(","):
            runs = [run_once(method, args.prompt, args.new_tokens, cache)
                    for _ in range(args.runs)]
            later = runs[1:] or runs
            print(f"| {method} | {runs[0][0]:.2f} | {runs[0][1]:.1f} | "
                  f"{statistics.median(w for w, _ in later):.2f} | "
                  f"{statistics.median(r for _, r in later):.1f} |", flush=True)


if __name__ == "__main__":
    main()
