"""`tokenforge eval-code`, `make-tasks`, `train-coder` and `fit-adadec`: registered on the main
typer app by `tokenforge.cli`."""

from __future__ import annotations

import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tokenforge.cli_common import finite
from tokenforge.errors import InvalidOptionError

if TYPE_CHECKING:
    from tokenforge.decoding.strategies.adadec import AdaDecOptions
    from tokenforge.decoding.strategies.pg_td import PGTDOptions


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InvalidOptionError(f"{flag} expects comma-separated integers, e.g. 8,16,32; got "
                                 f"'{text}'") from None
    if not values:
        raise InvalidOptionError(f"{flag} names no value: give e.g. 8,16,32")
    return values


def threshold_for(loaded, given: str | None, out: Path, log) -> float:
    """AdaDec's threshold: a number, a fit file, the model folder's `adadec.json`, or a fit on
    300 lab-train tasks (`FIT_TASKS`) written to `out/adadec.json`."""
    from tokenforge.decoding.strategies.adadec import ThresholdFit, fit_threshold
    from tokenforge.tasks.coder import FIT_TASKS
    from tokenforge.tasks.taskset import lab_train

    if given is not None:
        try:
            return float(given)
        except ValueError:
            if not Path(given).is_file():
                raise InvalidOptionError(f"--threshold '{given}' is neither a number of nats nor "
                                         "a fit file (write one with `tokenforge fit-adadec`)") from None
            return ThresholdFit.load(Path(given)).threshold
    bundled = Path(loaded.model.name_or_path) / "adadec.json"
    if bundled.is_file():
        fit = ThresholdFit.load(bundled)
        log(f"adadec: threshold {fit.threshold:.3f} nats from {bundled}")
        return fit.threshold
    log("adadec: no fitted threshold for this model; fitting one on 300 lab-train tasks "
        "(save it with `tokenforge fit-adadec`)")
    fit = fit_threshold(loaded, [(t.prompt, t.reference) for t in lab_train(*FIT_TASKS)],
                        progress=True)
    out.mkdir(parents=True, exist_ok=True)
    fit.save(out / "adadec.json")
    return fit.threshold


def eval_code(
    model: Annotated[str, typer.Option(help="demo-coder, demo, a local directory or a hub id")],
    tasks: Annotated[str, typer.Option(
        help="lab-heldout, humaneval, lab-train[:SEED[:COUNT]] or a .jsonl file of tasks")],
    out: Annotated[Path, typer.Option(help="folder for results.json, tasks.jsonl, report.md and "
                                           "pass_vs_compute.png")],
    decoder: Annotated[str, typer.Option(
        help="comma-separated: greedy, sample, filter, adadec, pg-td")] = "greedy",
    n: Annotated[int, typer.Option("-n", help="samples per task (sample)")] = 10,
    budgets: Annotated[str, typer.Option(
        help="programs per task for filter and pg-td, comma-separated")] = "8,16,32",
    temperature: Annotated[float, typer.Option(help="sample and filter",
                                               callback=finite)] = 0.8,
    top_p: Annotated[float, typer.Option(help="sample and filter", callback=finite)] = 1.0,
    limit: Annotated[int | None, typer.Option(help="the first N tasks only")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="tokens per program at most")] = 128,
    method: Annotated[str, typer.Option(
        help="the engine method behind greedy (any lossless method: same programs)")] = "vanilla",
    threshold: Annotated[str | None, typer.Option(
        help="AdaDec's entropy threshold (nats) or a fit file; default: the model's "
             "adadec.json, else a fit on lab-train")] = None,
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", help="decoder option decoder.key=value, e.g. adadec.beam=3, "
                               "pg-td.top_k=3")] = None,
    workers: Annotated[int, typer.Option(help="sandbox processes at once")] = 2,
    timeout: Annotated[float, typer.Option(help="seconds per test in the sandbox",
                                           callback=finite)] = 2.0,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda")] = "auto",
):
    """Decode a task set with one or more decoders and score every program on hidden tests in
    the sandbox: pass@k with 95% bootstrap intervals, per-task results, compute, and a plot."""
    from tokenforge import load_model
    from tokenforge.bench.cli import parse_method_options
    from tokenforge.bench.system import environment
    from tokenforge.decoding.registry import get_method
    from tokenforge.tasks.evaluate import EvalConfig, evaluate, write_outputs
    from tokenforge.tasks.sandbox import Limits, Sandbox
    from tokenforge.tasks.taskset import load_tasks

    get_method(method)  # an unknown method fails before a model loads
    options = parse_method_options(option)
    unknown = set(options) - {"adadec", "pg-td"}
    if unknown:
        raise InvalidOptionError(f"--option names decoder(s) {', '.join(sorted(unknown))} that "
                                 "take no options: only adadec.KEY=VALUE and pg-td.KEY=VALUE")
    if "rollouts" in options.get("pg-td", {}):
        raise InvalidOptionError("pg-td's rollouts come from --budgets (the largest budget; the "
                                 "smaller ones are read from the same run)")
    cfg = EvalConfig(decoders=tuple(d.strip() for d in decoder.split(",") if d.strip()), n=n,
                     budgets=_ints(budgets, "--budgets"), temperature=temperature, top_p=top_p,
                     max_new_tokens=max_new_tokens, seed=seed, method=method)
    cfg.adadec, cfg.pg_td = parse_decoder_options(options)
    sandbox = Sandbox(Limits(per_test_s=timeout, wall_s=max(10.0, 5 * timeout)), workers=workers)
    task_list, description = load_tasks(tasks)
    if limit is not None:
        if limit < 1:
            raise InvalidOptionError("--limit must be at least 1")
        task_list = task_list[:limit]
    loaded = load_model(model, device=device)
    log = lambda msg: typer.echo(msg, err=True)  # noqa: E731
    if "adadec" in cfg.decoders:
        cfg.threshold = threshold_for(loaded, threshold, out, log)
    results = evaluate(loaded, task_list, cfg, sandbox, log=log)
    meta = {"model": model, "tasks": tasks, "task_set": description, "n_tasks": len(task_list),
            "config": asdict(cfg),
            "environment": environment(loaded.device, loaded.dtype),
            "command": "tokenforge " + shlex.join(sys.argv[1:])}
    write_outputs(out, results, meta)
    typer.echo((out / "report.md").read_text())


def parse_decoder_options(options: dict[str, dict[str, str]]) -> tuple[AdaDecOptions,
                                                                          PGTDOptions]:
    """Typed AdaDec and PG-TD options (validated now, before a model loads)."""
    from tokenforge.decoding.registry import parse_options
    from tokenforge.decoding.strategies.adadec import AdaDecOptions
    from tokenforge.decoding.strategies.pg_td import PGTDOptions

    return (parse_options(AdaDecOptions, "adadec", options.get("adadec", {})),
            parse_options(PGTDOptions, "pg-td", options.get("pg-td", {})))


def make_tasks(
    out: Annotated[Path, typer.Option(help="the .jsonl file to write")],
    split: Annotated[str, typer.Option(help="train or heldout")] = "heldout",
    count: Annotated[int, typer.Option(help="tasks to make")] = 200,
    seed: Annotated[int, typer.Option(help="generator seed")] = 0,
):
    """Write generated tasks (the bundled lab-heldout set is --split heldout --count 200
    --seed 0)."""
    from tokenforge.tasks.generator import generate_tasks
    from tokenforge.tasks.taskset import write_tasks

    if split not in ("train", "heldout"):
        raise InvalidOptionError("--split must be train or heldout")
    tasks = list(generate_tasks(split, count, seed))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_tasks(tasks, out)
    typer.echo(f"{len(tasks)} tasks from {len({t.family for t in tasks})} families -> {out}")


def train_coder(
    out: Annotated[Path | None, typer.Option(help="output folder (default: the bundled "
                                                  "demo-coder)")] = None,
    tasks: Annotated[int, typer.Option(help="lab-train tasks")] = 4000,
    epochs: Annotated[int, typer.Option(help="passes over them")] = 2,
):
    """Fine-tune `demo` on lab-train tasks into `demo-coder` (seeded; about 15 min on 2 cores),
    and fit its AdaDec threshold."""
    from tokenforge.tasks import coder

    record = coder.train_coder(out or coder.CODER_DIR, coder.CoderConfig(tasks=tasks, epochs=epochs),
                               log=lambda msg: typer.echo(msg, err=True))
    typer.echo(f"demo-coder: {record['steps']} steps, {record['wall_time_s']:.0f}s, "
               f"{record['file_bytes'] / 1e6:.1f} MB")


def fit_adadec(
    model: Annotated[str, typer.Option(help="the model to fit")],
    out: Annotated[Path, typer.Option(help="the JSON file to write (put it in the model's "
                                           "folder as adadec.json to make it the default)")],
    tasks: Annotated[str, typer.Option(help="tasks with reference solutions")] = "lab-train:1:300",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda")] = "auto",
):
    """Fit AdaDec's entropy threshold for a model: a logistic fit of "the greedy token differs
    from the reference" on the next-token entropy, over reference solutions."""
    from tokenforge import load_model
    from tokenforge.decoding.strategies.adadec import fit_threshold
    from tokenforge.tasks.taskset import load_tasks

    task_list, _ = load_tasks(tasks)
    pairs = [(t.prompt, t.reference) for t in task_list if t.reference]
    if not pairs:
        raise InvalidOptionError(f"the tasks of '{tasks}' have no reference solutions to fit on")
    fit = fit_threshold(load_model(model, device=device), pairs, progress=True)
    fit.save(out)
    typer.echo(f"threshold {fit.threshold:.3f} nats over {fit.n_positions} positions "
               f"(greedy disagrees with the reference at {100 * fit.disagreement_rate:.1f}%) "
               f"-> {out}")


def register(app: typer.Typer) -> None:
    app.command("eval-code")(eval_code)
    app.command("make-tasks")(make_tasks)
    app.command("train-coder")(train_coder)
    app.command("fit-adadec")(fit_adadec)

