"""benchmarks/gpu_bench.sh, dry-run on the CPU with tiny settings: every stage runs, on both
backends, and writes what BENCHMARKS.md's GPU section is made from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_bench_script_runs_on_the_cpu(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "SHAPES": "tiny", "LIMIT": "1", "NEW_TOKENS": "8",
           "METHODS": "vanilla,pld", "COST_SIZES": "1,4", "OUT": str(tmp_path),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_bench.sh")], env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    costs = json.loads((tmp_path / "costs.json").read_text())
    assert set(costs["results"]) == {"bfloat16", "float32"}
    assert set(costs["results"]["float32"]) == {"static", "static, unpacked", "transformers"}
    for backend in ("static", "transformers"):
        data = json.loads((tmp_path / f"demo-{backend}" / "results.json").read_text())
        assert data["methods"]["pld"]["lossless_rate"] == 1.0
        assert data["methods"]["pld"]["backend"].startswith(backend)
    floor = json.loads((tmp_path / "floor.json").read_text())
    shape = floor["shapes"][0]
    assert shape["shape"] == "tiny" and shape["static_ms_per_token"] > 0
    assert shape["fallback_ms_per_token"] > 0 and "!!" not in proc.stdout
