"""`tokenforge eval-code`: decoders on a task set, scored by hidden tests in the sandbox.

Decoders (one run may compare several; each task is decoded by each in turn):
- `greedy`: plain greedy decoding through the engine (`--method` picks any lossless method:
  the programs are the same, only the time differs);
- `sample`: n samples at `--temperature` (top-p `--top-p`), drawn as one batch per task;
  pass@1 and pass@k by the unbiased estimator (Chen et al. 2021);
- `filter`: the same samples, checked on the public tests in the order drawn; the answer at a
  budget of b programs is the first of the first b samples that passes every public test (else
  the one with the best public pass rate, the earliest on ties);
- `adadec`: entropy-gated lookahead reranking (`decoding/strategies/adadec.py`), with the
  model's fitted threshold;
- `pg-td`: MCTS with the public-test pass rate as reward (`decoding/strategies/pg_td.py`); its
  answer at each budget is read from one run's trace.
Budgets (`--budgets`) count programs generated and checked on the public tests; an identical
program is run once per task (`programs_executed` counts the runs). The hidden tests decide every
reported result; they are never shown to a decoder. Compute is counted per task: target
forwards, tokens forwarded (prompt included), programs executed and wall time (decoding plus its
public-test runs; the hidden-test scoring is not counted).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from tokenforge.decoding.api import encode_prompt
from tokenforge.decoding.engine import eos_token_ids
from tokenforge.decoding.stopper import Stopper
from tokenforge.decoding.strategies.adadec import AdaDecOptions
from tokenforge.decoding.strategies.base import StopRule
from tokenforge.decoding.strategies.pg_td import PGTDOptions
from tokenforge.errors import InvalidOptionError
from tokenforge.models.load import LoadedModel
from tokenforge.tasks.sandbox import Sandbox
from tokenforge.tasks.taskset import Task

DECODERS = ("greedy", "sample", "filter", "adadec", "pg-td")
BUDGETED = ("filter", "pg-td")


@dataclass
class EvalConfig:
    decoders: tuple[str, ...] = ("greedy",)
    n: int = 10  # samples per task (sample)
    ks: tuple[int, ...] = (1, 10)
    budgets: tuple[int, ...] = (8, 16, 32)  # programs (filter, pg-td)
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int = 0
    method: str = "vanilla"  # the engine method behind greedy
    adadec: AdaDecOptions = field(default_factory=AdaDecOptions)
    pg_td: PGTDOptions = field(default_factory=PGTDOptions)  # rollouts: max(budgets)
    threshold: float | None = None  # AdaDec's entropy threshold

    def __post_init__(self):
        unknown = [d for d in self.decoders if d not in DECODERS]
        if unknown or not self.decoders:
            raise InvalidOptionError(f"unknown decoder(s) {', '.join(unknown) or '(none)'}: "
                                     f"use a comma-separated list of {', '.join(DECODERS)}")
        if self.n < 1 or any(b < 1 for b in self.budgets) or not self.budgets:
            raise InvalidOptionError("-n and every --budgets value must be positive integers")
        if list(self.budgets) != sorted(set(self.budgets)):
            raise InvalidOptionError("--budgets must increase, e.g. 8,16,32")
        if self.temperature <= 0 and ("sample" in self.decoders or "filter" in self.decoders):
            raise InvalidOptionError("sample and filter need --temperature > 0 (greedy is the "
                                     "decoder for temperature 0)")
        if self.max_new_tokens < 1:
            raise InvalidOptionError("--max-new-tokens must be at least 1")

    @property
    def draws(self) -> int:
        """Samples drawn per task: enough for `sample`'s n and `filter`'s largest budget."""
        counts = [self.n] if "sample" in self.decoders else []
        if "filter" in self.decoders:
            counts.append(max(self.budgets))
        return max(counts, default=0)


@dataclass
class Decoded:
    """What a decoder produced for one task: the answers the hidden tests judge (one for greedy
    and adadec, n for sample, one per budget for filter and pg-td) and what it cost."""

    answers: list[str]
    budgets: list[int] | None = None
    target_forwards: int = 0
    tokens_forwarded: int = 0
    programs_executed: list[int] | None = None  # per budget, for filter and pg-td
    tokens_at_budget: list[int] | None = None  # tokens forwarded by each budget's answer
    wall_s: float = 0.0
    stats: dict = field(default_factory=dict)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def bootstrap(values: list[float], reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the mean over tasks."""
    if not values:
        return (float("nan"), float("nan"))
    data = np.asarray(values, dtype=float)
    gen = np.random.default_rng(seed)
    means = data[gen.integers(0, len(data), (reps, len(data)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


class PublicTests:
    """The public-test reward of one task, run once per distinct program."""

    def __init__(self, task: Task, sandbox: Sandbox):
        self.task, self.sandbox = task, sandbox
        self.rates: dict[str, float] = {}

    def __call__(self, completion: str) -> float:
        if completion not in self.rates:
            if self.task.public_tests:
                result = self.sandbox.run_tests(self.task.prompt + completion,
                                                self.task.public_tests)
                self.rates[completion] = result.pass_rate
            else:
                self.rates[completion] = 0.0
        return self.rates[completion]


class Evaluator:
    """Decodes tasks with the configured decoders and scores the answers on hidden tests."""

    def __init__(self, loaded: LoadedModel, cfg: EvalConfig, sandbox: Sandbox):
        self.loaded, self.cfg, self.sandbox = loaded, cfg, sandbox
        self.rule = StopRule(max_new_tokens=cfg.max_new_tokens)

    def decode(self, task: Task, index: int) -> dict[str, Decoded]:
        out: dict[str, Decoded] = {}
        samples = self._sample(task, index) if self.cfg.draws else None
        for name in self.cfg.decoders:
            if name == "greedy":
                out[name] = self._greedy(task)
            elif name == "sample":
                forwards, tokens = self._first(samples, self.cfg.n)
                out[name] = Decoded(answers=samples.answers[: self.cfg.n],
                                    target_forwards=forwards, tokens_forwarded=tokens,
                                    wall_s=samples.wall_s * self.cfg.n / self.cfg.draws)
            elif name == "filter":
                out[name] = self._filter(task, samples)
            elif name == "adadec":
                out[name] = self._adadec(task)
            else:
                out[name] = self._pg_td(task)
        return out

    def _greedy(self, task: Task) -> Decoded:
        from tokenforge import generate

        start = time.perf_counter()
        result = generate(self.loaded, task.prompt, method=self.cfg.method,
                          max_new_tokens=self.rule.max_new_tokens,
                          stop=list(self.rule.stop_strings))
        stats = result.stats
        return Decoded(answers=[result.text], target_forwards=stats.target_forwards + 1,
                       tokens_forwarded=stats.prompt_tokens + stats.new_tokens,
                       wall_s=time.perf_counter() - start)

    def _sample(self, task: Task, index: int) -> Decoded:
        """`draws` samples in one batched `generate` (seeded per task)."""
        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        start = time.perf_counter()
        ids = torch.tensor([encode_prompt(self.loaded, task.prompt)], device=self.loaded.device)
        torch.manual_seed(self.cfg.seed * 1_000_003 + index)
        with torch.no_grad():
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids),
                do_sample=True, temperature=self.cfg.temperature, top_p=self.cfg.top_p, top_k=0,
                max_new_tokens=self.rule.max_new_tokens, num_return_sequences=self.cfg.draws,
                stop_strings=list(self.rule.stop_strings), tokenizer=tokenizer,
                pad_token_id=tokenizer.eos_token_id)
        answers, lengths = [], []
        eos = eos_token_ids(model, tokenizer)
        for row in out[:, ids.shape[1]:].tolist():  # each row cut where the engine would stop
            stopper = Stopper(tokenizer, eos, self.rule.max_new_tokens,
                              list(self.rule.stop_strings), None)
            stopper.add(row)
            answers.append(stopper.text())
            lengths.append(len(stopper.tokens))
        return Decoded(answers=answers, target_forwards=max(lengths),
                       tokens_forwarded=ids.shape[1] * len(lengths) + sum(lengths),
                       wall_s=time.perf_counter() - start,
                       stats={"prompt_tokens": ids.shape[1], "lengths": lengths})

    @staticmethod
    def _first(samples: Decoded, count: int) -> tuple[int, int]:
        """Forwards and tokens forwarded of the first `count` samples (had they been drawn
        alone: the batch's prompt rows plus their own tokens)."""
        lengths = samples.stats["lengths"][:count]
        return max(lengths), samples.stats["prompt_tokens"] * len(lengths) + sum(lengths)

    def _filter(self, task: Task, samples: Decoded) -> Decoded:
        reward = PublicTests(task, self.sandbox)
        start = time.perf_counter()
        answers, executed = [], []
        for budget in self.cfg.budgets:
            pool = samples.answers[:budget]
            rates = [reward(answer) for answer in pool]
            answers.append(pool[int(np.argmax(rates))])  # argmax: the earliest best
            executed.append(len(set(pool)) if task.public_tests else 0)
        costs = [self._first(samples, budget) for budget in self.cfg.budgets]
        return Decoded(answers=answers, budgets=list(self.cfg.budgets),
                       target_forwards=costs[-1][0], tokens_forwarded=costs[-1][1],
                       programs_executed=executed, tokens_at_budget=[c[1] for c in costs],
                       wall_s=samples.wall_s * max(self.cfg.budgets) / self.cfg.draws
                       + time.perf_counter() - start)

    def _adadec(self, task: Task) -> Decoded:
        from tokenforge.decoding.strategies.adadec import adadec

        result = adadec(self.loaded, task.prompt, self.rule, self.cfg.adadec, self.cfg.threshold)
        return Decoded(answers=[result.text], target_forwards=result.target_forwards,
                       tokens_forwarded=result.tokens_forwarded, wall_s=result.wall_s,
                       stats={k: v for k, v in result.stats.items() if k != "trace"})

    def _pg_td(self, task: Task) -> Decoded:
        from tokenforge.decoding.strategies.pg_td import pg_td

        options = replace(self.cfg.pg_td, rollouts=max(self.cfg.budgets))
        result = pg_td(self.loaded, task.prompt, PublicTests(task, self.sandbox), self.rule,
                       options)
        trace, programs = result.stats["trace"], result.stats["programs"]
        at = [trace[min(budget, len(trace)) - 1] for budget in self.cfg.budgets]
        return Decoded(answers=[programs[entry.best]["text"] for entry in at],
                       budgets=list(self.cfg.budgets), target_forwards=result.target_forwards,
                       tokens_forwarded=result.tokens_forwarded,
                       programs_executed=[entry.programs_executed for entry in at],
                       tokens_at_budget=[entry.tokens_forwarded for entry in at],
                       wall_s=result.wall_s)


def score(tasks: list[Task], decoded: list[dict[str, Decoded]], sandbox: Sandbox,
          progress: bool) -> list[dict[str, list[bool]]]:
    """Hidden-test verdicts of every answer, each distinct program of a task run once."""
    jobs: dict[tuple[int, str], int] = {}
    programs: list[tuple[str, list[str]]] = []
    for i, (task, runs) in enumerate(zip(tasks, decoded)):
        for run in runs.values():
            for answer in run.answers:
                if (i, answer) not in jobs:
                    jobs[(i, answer)] = len(programs)
                    programs.append((task.prompt + answer, task.hidden_tests))
    results = sandbox.run_many(programs, progress=progress)
    return [{name: [results[jobs[(i, a)]].all_passed for a in run.answers]
             for name, run in runs.items()} for i, runs in enumerate(decoded)]


def summarise(cfg: EvalConfig, decoded: list[dict[str, Decoded]],
              verdicts: list[dict[str, list[bool]]]) -> dict:
    """Per decoder: pass rates with 95% bootstrap intervals over tasks, and mean compute."""
    summary = {}
    for name in cfg.decoders:
        runs = [d[name] for d in decoded]
        passed = [v[name] for v in verdicts]
        entry: dict = {
            "target_forwards": float(np.mean([r.target_forwards for r in runs])),
            "tokens_forwarded": float(np.mean([r.tokens_forwarded for r in runs])),
            "wall_s_per_task": float(np.mean([r.wall_s for r in runs])),
        }
        if name == "sample":
            for k in (k for k in cfg.ks if k <= cfg.n):
                values = [pass_at_k(len(p), sum(p), k) for p in passed]
                entry[f"pass@{k}"] = _rate(values)
        elif name in BUDGETED:
            entry["budgets"] = {
                str(b): {**_rate([float(p[j]) for p in passed]),
                         "programs_executed": float(np.mean([r.programs_executed[j]
                                                             for r in runs])),
                         "tokens_forwarded": float(np.mean([r.tokens_at_budget[j]
                                                            for r in runs]))}
                for j, b in enumerate(cfg.budgets)}
        else:
            entry["pass@1"] = _rate([float(p[0]) for p in passed])
        if name == "adadec":
            entry["pauses_per_task"] = float(np.mean([r.stats.get("pauses", 0) for r in runs]))
        summary[name] = entry
    return summary


def _rate(values: list[float]) -> dict:
    low, high = bootstrap(values)
    return {"rate": float(np.mean(values)), "ci95": [low, high]}


def per_task_rows(tasks: list[Task], decoded: list[dict[str, Decoded]],
                  verdicts: list[dict[str, list[bool]]]) -> list[dict]:
    rows = []
    for task, runs, verdict in zip(tasks, decoded, verdicts):
        for name, run in runs.items():
            rows.append({"task_id": task.task_id, "family": task.family, "decoder": name,
                         "passed": verdict[name], **{k: v for k, v in asdict(run).items()}})
    return rows


def evaluate(loaded: LoadedModel, tasks: list[Task], cfg: EvalConfig, sandbox: Sandbox,
             progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Decode and score; returns the results dict (summary + per-task rows)."""
    from tqdm import tqdm

    evaluator = Evaluator(loaded, cfg, sandbox)
    start = time.perf_counter()
    decoded = [evaluator.decode(task, i)
               for i, task in enumerate(tqdm(tasks, desc="decode", disable=not progress))]
    decode_s = time.perf_counter() - start
    log(f"decoded {len(tasks)} tasks in {decode_s:.0f}s; scoring on hidden tests")
    verdicts = score(tasks, decoded, sandbox, progress)
    return {"summary": summarise(cfg, decoded, verdicts),
            "tasks": per_task_rows(tasks, decoded, verdicts),
            "decode_s": round(decode_s, 1), "total_s": round(time.perf_counter() - start, 1)}


def write_outputs(out: Path, results: dict, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = {**meta, "summary": results["summary"], "decode_s": results["decode_s"],
               "total_s": results["total_s"]}
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(out / "tasks.jsonl", "w") as handle:
        for row in results["tasks"]:
            handle.write(json.dumps(row) + "\n")
    (out / "report.md").write_text(report(summary))
    plot(summary, out / "pass_vs_compute.png")


def _fmt(entry: dict) -> str:
    low, high = entry["ci95"]
    return f"{100 * entry['rate']:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def report(summary: dict) -> str:
    lines = [f"# eval-code: {summary['model']} on {summary['tasks']}", "",
             f"{summary['n_tasks']} tasks; {summary['environment']['device_name']}, "
             f"{summary['environment']['threads']} thread(s); "
             f"`{summary['command']}`", "",
             "| decoder | result (95% CI over tasks) | target forwards/task | "
             "tokens forwarded/task | programs executed/task | wall s/task |",
             "|---|---|---|---|---|---|"]
    for name, entry in summary["summary"].items():
        forwards, wall = f"{entry['target_forwards']:.0f}", f"{entry['wall_s_per_task']:.2f}"
        if "budgets" in entry:
            for budget, b in entry["budgets"].items():
                lines.append(f"| {name} @{budget} | pass {_fmt(b)} | {forwards} | "
                             f"{b['tokens_forwarded']:.0f} | {b['programs_executed']:.1f} | "
                             f"{wall} |")
        else:
            results = ", ".join(f"{key} {_fmt(entry[key])}" for key in entry if
                                key.startswith("pass@"))
            lines.append(f"| {name} | {results} | {forwards} | {entry['tokens_forwarded']:.0f} "
                         f"| 0 | {wall} |")
    lines += ["", "Tokens forwarded and programs executed are per budget; target forwards and "
              "wall time of a budgeted decoder are those of its largest budget. `sample` "
              "reports the cost of its n samples (drawn as one batch: its target forwards are "
              "the batch's).", ""]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    """Pass rate against tokens forwarded per task and against programs executed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, (ax_tokens, ax_programs) = plt.subplots(1, 2, figsize=(10, 4))
    for name, entry in summary["summary"].items():
        if "budgets" in entry:
            budgets = entry["budgets"]
            rates = [100 * b["rate"] for b in budgets.values()]
            programs = [b["programs_executed"] for b in budgets.values()]
            tokens = [b["tokens_forwarded"] for b in budgets.values()]
            ax_tokens.plot(tokens, rates, "o-", label=name)
            ax_programs.plot(programs, rates, "o-", label=name)
            for budget, x_tokens, x_programs, y in zip(budgets, tokens, programs, rates):
                ax_tokens.annotate(budget, (x_tokens, y), textcoords="offset points",
                                   xytext=(4, -10), fontsize=7)
                ax_programs.annotate(budget, (x_programs, y), textcoords="offset points",
                                     xytext=(4, -10), fontsize=7)
        else:
            key = "pass@1"
            ax_tokens.plot([entry["tokens_forwarded"]], [100 * entry[key]["rate"]], "s",
                           label=f"{name} ({key})")
            ax_programs.plot([0], [100 * entry[key]["rate"]], "s", label=f"{name} ({key})")
    ax_tokens.set_xscale("log")
    ax_tokens.xaxis.set_minor_formatter(NullFormatter())
    ax_tokens.set_xlabel("tokens forwarded per task (log)")
    ax_programs.set_xlabel("programs executed per task (public tests; labels: budget)")
    for ax in (ax_tokens, ax_programs):
        ax.set_ylabel("hidden-test pass rate (%)")
        ax.grid(alpha=0.3)
    ax_programs.legend(fontsize=8)
    fig.suptitle(f"{summary['model']} on {summary['tasks']} ({summary['n_tasks']} tasks)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
