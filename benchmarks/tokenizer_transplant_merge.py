"""Merge runs of benchmarks/tokenizer_transplant.py into the one table, plot and JSON of
benchmarks/TOKENIZERS.md.

Each argument is a run's output folder or log: its transplant.json when there is one, otherwise the
JSON rows the run printed to its log (a run stopped early still printed the rows it finished).
A later run's row for the same (target, method) replaces an earlier one when its recovery curve
continues the earlier curve exactly, which it does for the same seed (the same batches replay);
a curve that disagrees is an error.

    python benchmarks/tokenizer_transplant_merge.py build/tokenizers/tp-bpe \
        build/tokenizers/tp-llama3/run-omp.log build/tokenizers/tp-llama3 build/tokenizers/ext16k/run.log ...
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict
from pathlib import Path

from tokenizer_transplant import Row, markdown, plot_recovery

ROW = re.compile(r'\{"target".*?\}(?=\s*$)', re.MULTILINE)


def read_run(path: Path) -> tuple[dict | None, list[Row]]:
    """(original figures or None, rows) of one run."""
    if path.is_dir() and (path / "transplant.json").exists():
        data = json.loads((path / "transplant.json").read_text())
        return data["original"], [Row(**r) for r in data["rows"]]
    log = path if path.is_file() else path / "run.log"
    text = log.read_text(errors="replace").replace("\r", "\n")
    return None, [Row(**json.loads(match)) for match in ROW.findall(text)]


def merge(runs: list[list[Row]]) -> list[Row]:
    rows: dict[tuple[str, str], Row] = {}
    for run in runs:
        for row in run:
            key = (row.target, row.method)
            old = rows.get(key)
            if old is not None and row.curve[:len(old.curve)] != old.curve:
                raise SystemExit(f"{key}: the later curve does not continue the earlier one")
            if old is None or len(row.curve) >= len(old.curve):
                rows[key] = row
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders or logs, earliest first")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/tokenizer_transplant"),
                        help="writes OUT.png and OUT_results.json")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--eval-kb", type=int, default=128)
    parser.add_argument("--recovery-eval-kb", type=int, default=24)
    args = parser.parse_args()
    read = [read_run(path) for path in args.runs]
    originals = [original for original, _ in read if original is not None]
    if not originals:
        raise SystemExit("no run folder with a transplant.json among the arguments")
    rows = merge([rows for _, rows in read])
    order = {name: i for i, name in enumerate(dict.fromkeys(r.target for _, run in read for r in run))}
    rows.sort(key=lambda r: order[r.target])
    print(markdown(rows, originals[0], args))
    plot_recovery(rows, originals[0], args.out.with_suffix(".png"))
    Path(f"{args.out}_results.json").write_text(json.dumps(
        {"original": originals[0], "rows": [asdict(r) for r in rows]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
