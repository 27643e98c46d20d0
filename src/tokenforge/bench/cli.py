"""`tokenforge bench`: registered on the main typer app by `tokenforge.cli`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from tokenforge.cli_common import (
    DenyVulnerabilitiesOption,
    GrammarOption,
    JsonObjectOption,
    JsonSchemaOption,
    MonitorOption,
    RegexOption,
    RepilotOption,
    finite,
    guide_spec,
)
from tokenforge.errors import InvalidOptionError


def parse_method_options(pairs: list[str] | None) -> dict[str, dict[str, str]]:
    """`method.key=value` strings -> {method: {key: value}} (typed later by the method's schema)."""
    options: dict[str, dict[str, str]] = {}
    for pair in pairs or []:
        target, sep, value = pair.partition("=")
        method, dot, key = target.partition(".")
        if not (sep and dot and method.strip() and key.strip()):
            raise InvalidOptionError(f"--method-option expects method.key=value (e.g. "
                                     f"token-recycling.tree_size=24), got '{pair}'")
        options.setdefault(method.strip(), {})[key.strip()] = value.strip()
    return options


def parse_methods(methods: str) -> list[str]:
    """`--methods a,b` -> [a, b]; an empty list is refused rather than measuring vanilla alone."""
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise InvalidOptionError("--methods names no method: give a comma-separated list, e.g. "
                                 "--methods pld,hf-pld, or --methods all (see `tokenforge "
                                 "methods`)")
    return names


def bench(
    model: Annotated[str, typer.Option(help="target model: demo, a local directory or a hub id")],
    methods: Annotated[str, typer.Option(
        help="comma-separated methods and baselines (vanilla, pld, ..., hf-greedy, hf-pld, "
             "hf-assisted) or all; vanilla always runs")],
    dataset: Annotated[str, typer.Option(
        help="humaneval, stdlib-heldout, or a .jsonl file (Spec-Bench question.jsonl or "
             "{\"prompt\": ...} lines)")],
    out: Annotated[Path, typer.Option(help="folder for results.json, report.md, speedup.png")],
    draft_model: Annotated[str | None, typer.Option(
        help="draft model (hf-assisted and the draft-model methods)")] = None,
    limit: Annotated[int | None, typer.Option(
        help="measure the first N prompts that fit the context")] = None,
    category: Annotated[str | None, typer.Option(help="only prompts of this category")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="new tokens per prompt at most")] = 128,
    temperature: Annotated[float, typer.Option(
        help="0 = greedy; > 0 samples (the lossless rate is then informational)",
        callback=finite)] = 0.0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16, float16")] = "auto",
    repeats: Annotated[int, typer.Option(
        help="time each prompt R times and keep the median")] = 1,
    warmup: Annotated[int, typer.Option(help="untimed warm-up generations per method")] = 1,
    seed: Annotated[int, typer.Option(
        help="sampling seed of the first prompt (prompt i gets seed + i)")] = 0,
    method_option: Annotated[list[str] | None, typer.Option(
        "--method-option", "-m", help="method.key=value (repeatable)")] = None,
    backend: Annotated[str, typer.Option(
        help="tokenforge methods: auto (the fast path where it applies), static, "
             "transformers")] = "auto",
    sampler: Annotated[str, typer.Option(
        help="tokenforge methods at temperature > 0: gumbel or rejection")] = "gumbel",
    calibration_from: Annotated[Path | None, typer.Option(
        help="replay an earlier results.json: its recorded tree sizes (unless set with "
             "--method-option) and its cost curves")] = None,
    progress: Annotated[bool, typer.Option(help="live progress bar on stderr")] = True,
    ar_model: Annotated[str, typer.Option(
        help="diffusion models: the AR model that judges the outputs (bits per byte) and runs "
             "the AR methods named in --methods")] = "demo",
    json_schema: JsonSchemaOption = None,
    json_object: JsonObjectOption = False,
    regex: RegexOption = None,
    grammar: GrammarOption = None,
    monitor: MonitorOption = None,
    repilot: RepilotOption = False,
    deny_vulnerabilities: DenyVulnerabilitiesOption = False,
):
    """Benchmark decoding methods against vanilla and the transformers baselines, same prompts.
    With a guide option, every method and vanilla run under the same guide (the transformers
    baselines cannot: they are refused, and left out of `--methods all`)."""
    names = parse_methods(methods)  # before the imports: a mistake is refused at once
    spec = guide_spec(json_schema, json_object, regex, grammar, monitor, repilot,
                      deny_vulnerabilities)
    from tokenforge.dllm.model import is_dllm_checkpoint

    if is_dllm_checkpoint(model):
        if spec is not None or draft_model or temperature or calibration_from:
            raise InvalidOptionError("a diffusion model's benchmark is greedy and takes no guide, "
                                     "draft model or calibration file")
        return bench_diffusion(model, names, dataset, out, ar_model, limit, max_new_tokens,
                               device, warmup, progress)
    from tokenforge.bench.report import markdown_table, write_outputs
    from tokenforge.bench.runner import BenchConfig, run_bench

    config = BenchConfig(
        model=model, methods=names, dataset=dataset, draft_model=draft_model,
        limit=limit, category=category,
        max_new_tokens=max_new_tokens, temperature=temperature, device=device, dtype=dtype,
        repeats=repeats, warmup=warmup, seed=seed,
        method_options=parse_method_options(method_option), backend=backend, sampler=sampler,
        calibration_from=calibration_from, guide=spec)
    result = run_bench(config, progress=progress)
    data = write_outputs(result, out, shlex.join(["tokenforge", *sys.argv[1:]]))
    typer.echo(markdown_table(data))
    typer.echo(f"\nwrote {out / 'results.json'}, {out / 'report.md'}, {out / 'speedup.png'}")


def bench_diffusion(model: str, names: list[str], dataset: str, out: Path, ar_model: str,
                    limit: int | None, gen_length: int, device: str, warmup: int,
                    progress: bool) -> None:
    """`tokenforge bench` on a masked-diffusion model: settings `name[:key=value...]`, `all` for
    every diffusion decoder at its defaults (tokenforge.dllm.bench)."""
    from tokenforge.dllm.bench import (
        DiffusionBenchConfig,
        markdown,
        run_diffusion_bench,
        write_outputs,
    )
    from tokenforge.dllm.registry import all_decoders

    if names == ["all"]:
        names = [m.name for m in all_decoders()]
    config = DiffusionBenchConfig(model, names, dataset, ar_model, limit, gen_length, device,
                                  warmup)
    data = run_diffusion_bench(config, progress=progress)
    write_outputs(data, out, shlex.join(["tokenforge", *sys.argv[1:]]))
    typer.echo(markdown(data))
    typer.echo(f"\nwrote {out / 'results.json'}, {out / 'report.md'}, {out / 'speed_quality.png'}")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
