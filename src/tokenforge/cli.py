"""The `tokenforge` command: generate, methods, models, train-demo (and bench, serve, tokenizer)."""

from __future__ import annotations

import sys
from pathlib import Path

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
    parse_options,
    run,
    utf8_text,
)

# Plain click help, not rich's panels: those cut long option names at 80 columns.
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="tokenforge: fast, lossless and guided decoding on any HF causal LM.")


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="the prompt text", callback=utf8_text),
    model: str = typer.Option("demo", help="demo, demo-draft, a local directory or a hub id"),
    method: str = typer.Option("vanilla", help="decoding method (see `tokenforge methods`)"),
    draft_model: str = typer.Option(None, help="draft model for draft-model methods"),
    max_new_tokens: int = typer.Option(128, help="tokens to generate at most"),
    temperature: float = typer.Option(0.0, help="0 = greedy", callback=finite),
    top_k: int = typer.Option(0, help="0 = off"),
    top_p: float = typer.Option(1.0, help="1.0 = off", callback=finite),
    seed: int = typer.Option(None, help="sampling seed"),
    stop: list[str] = typer.Option(None, help="stop string (repeatable)"),
    option: list[str] = typer.Option(None, "--option", "-o", help="method option key=value"),
    device: str = typer.Option("auto", help="auto, cpu, cuda"),
    dtype: str = typer.Option("auto", help="auto, float32, bfloat16, float16"),
    backend: str = typer.Option("auto", help="auto (the fast path where it applies), static, "
                                             "transformers"),
    sampler: str = typer.Option("gumbel", help="temperature > 0: gumbel (reproducible seeds) "
                                               "or rejection"),
    trust_remote_code: bool = typer.Option(False, help="run the model repo's own code"),
    stats: bool = typer.Option(True, help="print generation stats to stderr"),
    json_schema: JsonSchemaOption = None,
    json_object: JsonObjectOption = False,
    regex: RegexOption = None,
    grammar: GrammarOption = None,
    monitor: MonitorOption = None,
    repilot: RepilotOption = False,
    deny_vulnerabilities: DenyVulnerabilitiesOption = False,
):
    """Generate a continuation of PROMPT, streaming it to stdout (constrained by the guide
    options, if any)."""
    from tokenforge import generate as run_generate
    from tokenforge import load_model
    from tokenforge.decoding.registry import get_method
    from tokenforge.dllm.registry import get_decoder, is_diffusion_method
    from tokenforge.guides import make_guide

    spec_of = get_decoder if is_diffusion_method(method) else get_method
    spec_of(method).resolve_options(parse_options(option))  # fail before loading a model
    spec = guide_spec(json_schema, json_object, regex, grammar, monitor, repilot,
                      deny_vulnerabilities)
    loaded = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    guide = make_guide(loaded, spec) if spec is not None else None  # a bad grammar fails here
    draft = load_model(draft_model, device=device, dtype=dtype,
                       trust_remote_code=trust_remote_code) if draft_model else None
    sys.stdout.write(prompt)
    try:
        result = run_generate(loaded, prompt, method=method, draft=draft,
                              max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                              top_p=top_p, seed=seed, stop=stop or None, backend=backend,
                              sampler=sampler, guide=guide,
                              on_text=lambda text: (sys.stdout.write(text), sys.stdout.flush()),
                              **parse_options(option))
    finally:  # end the line of text even when an error or Ctrl-C cuts it short
        sys.stdout.write("\n")
    s = result.stats
    if s.finish_reason == "guide":
        typer.echo(f"finish: guide (the guide {s.guide['name']} allowed no next token)"
                   if s.guide else "finish: guide (the guide allowed no next token)", err=True)
    if stats:
        guided = ""
        if s.guide:
            guided = (f"; guide {s.guide['name']}: {s.guide.get('guide_s', 0.0):.3f}s, "
                      f"{s.guide.get('forced_tokens', 0)} forced tokens, "
                      f"{s.guide.get('pruned_nodes', 0)} draft tokens cut")
        typer.echo(f"[{method}] {s.new_tokens} tokens in {s.total_s:.2f}s "
                   f"({s.tokens_per_s:.1f} tok/s), {s.target_forwards} target forwards, "
                   f"{s.mean_accepted_tokens:.2f} tokens/forward, finish: {s.finish_reason}; "
                   f"backend: {s.backend}{guided}", err=True)


@app.command()
def methods():
    """List every decoding method with its paper and options."""
    from tokenforge.decoding.registry import all_methods
    from tokenforge.dllm.registry import all_decoders

    typer.echo("Autoregressive models (demo, any causal LM):")
    for m in all_methods():
        _describe(m, "  (needs --draft-model)" if m.needs_draft else "")
    typer.echo("\nMasked-diffusion models (demo-dllm); --max-new-tokens is the canvas length:")
    for m in all_decoders():
        _describe(m, "")


def _describe(m, note: str) -> None:
    typer.echo(f"{m.name}{note}")
    typer.echo(f"    {m.summary}")
    typer.echo(f"    paper: {m.paper}")
    for key, opt in m.options.items():
        typer.echo(f"    --option {key}={opt.default!s:<10} {opt.help}")


@app.command()
def models():
    """List the bundled models."""
    import json

    from tokenforge.models.load import DEMO_DIR, DEMO_MODELS

    record = DEMO_DIR / "training.json"
    info = json.loads(record.read_text())["models"] if record.exists() else {}
    for name, desc in DEMO_MODELS.items():
        extra = info.get(name, {})
        figure = f", held-out perplexity {extra['heldout_perplexity']}" if extra else ""
        own = DEMO_DIR / name / "training.json"  # demo-coder keeps its own record
        if not extra and own.exists():
            own_record = json.loads(own.read_text())
            rate = own_record.get("greedy_pass@1", {}).get("lab-heldout")
            figure = f", greedy pass@1 {100 * rate['rate']:.1f}% on lab-heldout" if rate else ""
            if "heldout_elbo_bits_per_byte" in own_record:
                figure = (f", held-out ELBO {own_record['heldout_elbo_bits_per_byte']} bits/byte "
                          f"(demo: {own_record['demo_bits_per_byte']})")
        typer.echo(f"{name:<11} {desc}{figure}")
    typer.echo("Any local directory with config.json + safetensors, or a hub id, also works.")


@app.command("train-demo")
def train_demo_cmd(
    out: Path = typer.Option(None, help="output folder (default: the bundled demo folder)"),
    target_steps: int = typer.Option(None, help="override the target's training steps"),
    draft_steps: int = typer.Option(None, help="override the draft's training steps"),
):
    """Retrain the bundled tokenizer, demo target and demo draft (seeded; about an hour on 2 cores)."""
    from tokenforge.models.train_demo import DEMO_DIR, TrainConfig, train_demo

    cfg = TrainConfig()
    if target_steps:
        cfg.target_steps = target_steps
    if draft_steps:
        cfg.draft_steps = draft_steps
    record = train_demo(out or DEMO_DIR, cfg, log=lambda msg: typer.echo(msg, err=True))
    for name, stats in record["models"].items():
        typer.echo(f"{name}: {stats['parameters']:,} parameters, held-out perplexity "
                   f"{stats['heldout_perplexity']}, {stats['wall_time_s']}s, "
                   f"{stats['file_bytes'] / 1e6:.1f} MB")


@app.command("train-dllm")
def train_dllm_cmd(
    out: Path = typer.Option(None, help="output folder (default: the bundled demo-dllm folder)"),
    steps: int = typer.Option(None, help="override the training steps"),
    init: str = typer.Option("demo", help="demo (adapt the AR demo's weights) or scratch"),
):
    """Rebuild demo-dllm: the AR demo adapted into a masked-diffusion LM with the MDLM objective
    (seeded; about half an hour on 2 cores)."""
    from tokenforge.dllm.train import DLLM_DIR, DiffusionRecipe, train_dllm

    if init not in ("demo", "scratch"):
        raise typer.BadParameter("--init must be demo or scratch")
    recipe = DiffusionRecipe(init=init)
    if steps:
        recipe.steps = steps
    record = train_dllm(out or DLLM_DIR, recipe, log=lambda msg: typer.echo(msg, err=True))
    typer.echo(f"demo-dllm: {record['parameters']:,} parameters, held-out ELBO "
               f"{record['heldout_elbo_bits_per_byte']} bits/byte (demo: "
               f"{record['demo_bits_per_byte']}), {record['wall_time_s']}s, "
               f"{record['file_bytes'] / 1e6:.1f} MB")


@app.command("train-learn2pd")
def train_learn2pd_cmd(
    model: str = typer.Option("demo-dllm", help="the diffusion model whose traces train it"),
    out: Path = typer.Option(None, help="output folder (default: demo-dllm's bundled folder)"),
    prompts: int = typer.Option(120, help="training-split stdlib prompts to trace"),
    gen_length: int = typer.Option(64, help="canvas length of the traces"),
):
    """Train Learn2PD's filter on a diffusion model's own oracle traces (minutes on 2 cores)."""
    from tokenforge.dllm.decoders.learn2pd import BUNDLED_FILTER, train_filter

    record = train_filter(model, out or BUNDLED_FILTER.parent, prompts, gen_length,
                          log=lambda msg: typer.echo(msg, err=True))
    typer.echo(f"learn2pd filter: {record['examples']} examples, validation "
               f"{record['validation']}, {record['wall_time_s']}s")


def _register_subsystem_commands() -> None:
    """bench, serve, tokenizer, distill-draft, train-vuln and the code-task commands live with
    their subsystems; each adds itself."""
    from tokenforge.bench.cli import register as bench
    from tokenforge.guides.vuln import register as vuln
    from tokenforge.models.distill import register as distill
    from tokenforge.serve.cli import register as serve
    from tokenforge.tasks.cli import register as tasks
    from tokenforge.tokenization.cli import register as tokenizer

    for register in (bench, serve, tokenizer, distill, vuln, tasks):
        register(app)


_register_subsystem_commands()


def main() -> None:
    run(app)
