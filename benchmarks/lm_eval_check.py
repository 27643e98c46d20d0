"""lm-evaluation-harness against `tokenforge serve`: two small code tasks scored through the server
(lm-eval's `local-completions` model) and through lm-eval's own `hf` backend on the same demo
model; the scores, and every item's answer, must be the same.

The tasks are written here, from stdlib-style code, as local YAML + JSONL (no download):
- `tokenforge_next_identifier` (generate_until): complete a code line; exact match on the first
  identifier generated (greedy, stops at the end of the line).
- `tokenforge_pick_continuation` (multiple_choice, i.e. loglikelihood): pick the right
  continuation of a code line among four; lm-eval sends these as echo + logprobs requests with
  token-id prompts, the path that scores a prompt without generating.

lm-eval is not a tokenforge dependency; install it into the same environment first:

    pip install "lm-eval[api]>=0.4,<0.5" accelerate
    python benchmarks/lm_eval_check.py             # results in out/lm_eval_check/

The server runs in a child process (`python -m tokenforge serve --model demo`, one thread, its
default method); the `hf` backend loads src/tokenforge/models/demo/demo in float32 on the CPU,
offline. The same as lm-eval's command line:

    lm_eval --model local-completions --include_path out/lm_eval_check/tasks \\
        --tasks tokenforge_next_identifier,tokenforge_pick_continuation --model_args \\
        base_url=http://127.0.0.1:PORT/v1/completions,model=demo,tokenizer=DEMO_DIR,...
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = ROOT / "src" / "tokenforge" / "models" / "demo" / "demo"
INSTALL = 'pip install "lm-eval[api]>=0.4,<0.5" accelerate'
GENERATE_TASK, CHOICE_TASK = "tokenforge_next_identifier", "tokenforge_pick_continuation"
METRICS = {GENERATE_TASK: "exact_match,first-identifier", CHOICE_TASK: "acc,none"}
LOGLIKELIHOOD_TOLERANCE = 1e-3  # server (engine backend) vs hf (transformers forward), float32

# (code before the cursor, the identifier that comes next)
NEXT_IDENTIFIER = [
    ("    def __enter__(self):\n        return", "self"),
    ("import os\nimport", "sys"),
    ("def _check_arg(value):\n    if value is", "None"),
    ("    def __exit__(self, exc_type, exc_value, traceback):\n        self", "close"),
    ("def isdir(s):\n    try:\n        st = os.stat(s)\n    except (OSError, ValueError):\n"
     "        return", "False"),
    ("    def __init__(self, name):\n        self.name =", "name"),
    ("        if not isinstance(name, str):\n            raise", "TypeError"),
    ("    def __eq__(self, other):\n        if not isinstance(other, Point):\n"
     "            return", "NotImplemented"),
    ("    def get(self, key, default=None):\n        try:\n            return self[key]\n"
     "        except KeyError:\n            return", "default"),
    ("        for i in", "range"),
    ("    def __iter__(self):\n        return", "iter"),
    ("def main():\n    parser = argparse.", "ArgumentParser"),
    ("    def __len__(self):\n        return", "len"),
    ("    except ImportError:\n       ", "pass"),
    ("class Error(Exception):\n   ", "pass"),
    ("    def __repr__(self):\n        return '<%s>' % self.__class__.", "__name__"),
]

# (code before the cursor, four continuations, the index of the right one)
PICK_CONTINUATION = [
    ("    def __enter__(self):\n        return", [" self", " 0", " []", " else"], 0),
    ("import os\nimport", [" 42", " sys", " =", " return"], 1),
    ("if __name__ ==", [" None:", " '__main__':", " 3.5", " [1]"], 1),
    ("def isdir(s):\n    try:\n        st = os.stat(s)\n    except (OSError, ValueError):\n"
     "        return", [" False", " import", " class", " ]"], 0),
    ("    def __init__(self, name):\n        self.name =", [" )", " def", " name", " :"], 2),
    ("        for i in", [" range(n):", " return", " import", " =="], 0),
    ("with open(path, 'rb') as", [" f:", " 12", " def", " )"], 0),
    ("    def __len__(self):\n        return", [" len(self._data)", " import", " class",
                                                 " else:"], 0),
    ("        if not isinstance(name, str):\n            raise", [" 3", " TypeError(name)",
                                                                 " import", " :"], 1),
    ("    @property\n    def name(self):\n        return", [" self._name", " import os",
                                                           " def", " ]"], 0),
    ("    def __repr__(self):\n        return '%s(%r)' % (self.__class__.__name__,",
     [" self.name)", " import", " class:", " = 1"], 0),
    ("try:\n    import threading\nexcept", [" ImportError:", " return", " 0", " def"], 0),
    ("    def keys(self):\n        return", [" list(self._data)", " import", " class",
                                              " 1 +"], 0),
    ("def join(a, *p):\n    a = os.fspath(a)\n    sep =", [" '/'", " import", " return",
                                                           " class"], 0),
    ("    def close(self):\n        if self._file is not None:\n            self._file.",
     ["close()", "import", "0", "class"], 0),
    ("__all__ = [", ["'main']", "import", "0.5", "def"], 0),
]


def require_lm_eval() -> str:
    """lm-eval's version; exit with the install command when it or accelerate is missing."""
    missing = [name for name in ("lm_eval", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(f"error: this check needs {' and '.join(missing)}, which tokenforge does "
                         f"not install; install it into this environment: {INSTALL}")
    version = importlib.metadata.version("lm_eval")
    if not version.startswith("0.4."):
        raise SystemExit(f"error: this check is written for lm-eval 0.4.x, found {version}: "
                         f"{INSTALL}")
    return version


def write_tasks(folder: Path) -> None:
    """The two tasks as lm-eval YAML (JSON is valid YAML) and their JSONL items."""
    folder.mkdir(parents=True, exist_ok=True)
    _jsonl(folder / "next_identifier.jsonl",
           [{"context": c, "target": t} for c, t in NEXT_IDENTIFIER])
    _jsonl(folder / "pick_continuation.jsonl",
           [{"context": c, "choices": ch, "gold": g} for c, ch, g in PICK_CONTINUATION])
    common = {"dataset_path": "json", "test_split": "test", "doc_to_text": "{{context}}",
              "target_delimiter": ""}
    generate_until = {
        "task": GENERATE_TASK, **common, "output_type": "generate_until",
        "dataset_kwargs": {"data_files": {"test": str(folder / "next_identifier.jsonl")}},
        "doc_to_target": "{{target}}",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8, "do_sample": False,
                              "temperature": 0.0},
        "filter_list": [{"name": "first-identifier", "filter": [
            {"function": "regex", "regex_pattern": r"^\s*([A-Za-z_][A-Za-z0-9_]*)"},
            {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean",
                         "higher_is_better": True}]}
    multiple_choice = {
        "task": CHOICE_TASK, **common, "output_type": "multiple_choice",
        "dataset_kwargs": {"data_files": {"test": str(folder / "pick_continuation.jsonl")}},
        "doc_to_choice": "{{choices}}", "doc_to_target": "{{gold}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    for name, config in (("next_identifier", generate_until),
                         ("pick_continuation", multiple_choice)):
        (folder / f"{name}.yaml").write_text(json.dumps(config, indent=2) + "\n")


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, log: Path) -> subprocess.Popen:
    """`tokenforge serve --model demo` in a child process, once /health answers."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tokenforge", "serve", "--model", "demo", "--device", "cpu",
               "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"error: the server exited with {server.returncode}; its output:\n"
                             f"{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return server
        except OSError:
            time.sleep(0.2)
    server.terminate()
    raise SystemExit(f"error: the server did not answer /health within 120 s; see {log}")


def evaluate(model: str, model_args: dict, tasks: Path) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=model, model_args=model_args,
                                   tasks=[GENERATE_TASK, CHOICE_TASK],
                                   task_manager=TaskManager(include_path=str(tasks)),
                                   batch_size=1, log_samples=True)


def answers(run: dict, task: str) -> list:
    """Each item's answer: the generated text (before the filter), or each choice's
    loglikelihood."""
    samples = sorted(run["samples"][task], key=lambda s: s["doc_id"])
    if task == GENERATE_TASK:
        return [s["resps"][0][0] for s in samples]
    return [[float(ll) for ll, _ in s["filtered_resps"]] for s in samples]


def compare(server: dict, hf: dict) -> dict:
    """Scores and per-item answers of both runs; `equal` when they agree on every item."""
    report = {}
    for task, metric in METRICS.items():
        ours, theirs = answers(server, task), answers(hf, task)
        if task == GENERATE_TASK:
            differ = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
            gap = None
        else:
            differ = [i for i, (a, b) in enumerate(zip(ours, theirs))
                      if a.index(max(a)) != b.index(max(b))]
            gap = max(abs(x - y) for a, b in zip(ours, theirs) for x, y in zip(a, b))
        report[task] = {"metric": metric, "server": server["results"][task][metric],
                        "hf": hf["results"][task][metric], "items": len(ours),
                        "items_that_differ": differ, "max_loglikelihood_gap": gap}
        report[task]["equal"] = (report[task]["server"] == report[task]["hf"] and not differ
                                 and (gap is None or gap <= LOGLIKELIHOOD_TOLERANCE))
    return report


def write_report(report: dict, out: Path, version: str) -> None:
    (out / "result.json").write_text(json.dumps({"lm_eval": version, "tasks": report},
                                                indent=2) + "\n")
    lines = [f"# lm-eval {version}: tokenforge serve vs hf, demo model", "",
             "| task | metric | server | hf | items | differ | max loglikelihood gap |",
             "|---|---|---|---|---|---|---|"]
    for task, row in report.items():
        gap = "-" if row["max_loglikelihood_gap"] is None else f"{row['max_loglikelihood_gap']:.2e}"
        lines.append(f"| {task} | {row['metric']} | {row['server']:.4f} | {row['hf']:.4f} | "
                     f"{row['items']} | {len(row['items_that_differ'])} | {gap} |")
    (out / "result.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "lm_eval_check")
    args = parser.parse_args()
    version = require_lm_eval()
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    import torch

    torch.set_num_threads(1)
    write_tasks(args.out / "tasks")
    port = free_port()
    server = start_server(port, args.out / "server.log")
    try:
        served = evaluate("local-completions", {
            "base_url": f"http://127.0.0.1:{port}/v1/completions", "model": "demo",
            "tokenizer": str(DEMO_DIR), "tokenizer_backend": "huggingface",
            "tokenized_requests": True, "max_length": 1024, "num_concurrent": 1,
            "max_retries": 1}, args.out / "tasks")
    finally:
        server.terminate()
        server.wait(timeout=30)
    hf = evaluate("hf", {"pretrained": str(DEMO_DIR), "dtype": "float32", "device": "cpu"},
                  args.out / "tasks")
    report = compare(served, hf)
    write_report(report, args.out, version)
    failed = [task for task, row in report.items() if not row["equal"]]
    if failed:
        raise SystemExit(f"error: the server and hf disagree on {', '.join(failed)} "
                         f"(see {args.out / 'result.json'})")
    print(f"ok: the server's scores equal lm-eval's hf backend on both tasks ({args.out})")


if __name__ == "__main__":
    main()
