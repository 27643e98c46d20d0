"""The benchmark's outputs: `results.json` (versioned schema), `report.md` and `speedup.png`.

`report.md` and the plot are made from the results.json dict alone, so they can be remade from
a saved file (`markdown_report(json.load(...))`).

results.json, schema_version 1:
    schema_version, created, command, model, draft_model, device, device_name, dtype, threads,
    platform, versions {tokenforge, torch, transformers, python}, memory_kind,
    dataset {name, source, sha256, category, n_prompts, skipped_prompts, warmup_prompt,
             warmup_in_measured_set},
    settings {max_new_tokens, temperature, greedy, repeats, warmup, seed, limit},
    reference ("vanilla"), lossless_informational (true under sampling),
    methods {name: {kind, paper, options, n_prompts, new_tokens, seconds, tokens_per_s, speedup,
                    mean_accepted_tokens, target_forwards, lossless_rate, peak_memory_mb,
                    time_split (tokenforge methods; null for the transformers baselines):
                        {draft_s, verify_s, other_s, total_s, draft_share[, overlap (pearl)]},
                    prompts [{id, prompt_tokens, new_tokens, target_forwards, seconds, lossless,
                              output_sha1}]}}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tokenforge.bench.runner import REFERENCE, BenchResult, MethodResult
from tokenforge.errors import TokenforgeError

SCHEMA_VERSION = 1
STATEFUL_NOTE = ("Each tokenforge method's drafter is built once and reused for the warm-up and "
                 "every prompt, so stateful drafters (token-recycling's adjacency matrix, aded's "
                 "n-gram table) start each prompt with what the earlier ones taught them, as in a "
                 "long-running server; prompts run in dataset order.")
MEMORY_NOTES = {
    "cuda_max_allocated": "torch.cuda.max_memory_allocated, reset before each method",
    "rss_peak": "peak resident set size of the process, reset before each method",
    "rss_peak_since_start": "peak resident set size since the process started (this system "
                            "does not allow a reset, so later methods show at least the earlier "
                            "peaks)",
}


def results_json(result: BenchResult, command: str | None = None) -> dict:
    config = result.config
    return {
        "schema_version": SCHEMA_VERSION,
        "created": result.created,
        "command": command,
        "model": config.model,
        "draft_model": config.draft_model,
        **result.environment,
        "memory_kind": result.memory_kind,
        "dataset": result.dataset,
        "settings": {"max_new_tokens": config.max_new_tokens, "temperature": config.temperature,
                     "greedy": config.greedy, "repeats": config.repeats,
                     "warmup": config.warmup, "seed": config.seed, "limit": config.limit},
        "reference": REFERENCE,
        "lossless_informational": not config.greedy,
        "methods": {m.name: method_json(m) for m in result.methods},
    }


def method_json(result: MethodResult) -> dict:
    return {
        "kind": result.plan.kind, "paper": result.plan.spec.paper, "options": result.plan.options,
        "n_prompts": len(result.prompts), "new_tokens": result.new_tokens,
        "seconds": result.seconds, "tokens_per_s": result.tokens_per_s,
        "speedup": result.speedup, "mean_accepted_tokens": result.mean_accepted_tokens,
        "target_forwards": result.target_forwards, "lossless_rate": result.lossless_rate,
        "peak_memory_mb": result.peak_memory_mb, "time_split": result.time_split,
        "prompts": [{"id": p.prompt_id, "prompt_tokens": p.prompt_tokens,
                     "new_tokens": p.new_tokens, "target_forwards": p.target_forwards,
                     "seconds": p.seconds, "lossless": p.lossless,
                     "output_sha1": hashlib.sha1(json.dumps(p.token_ids).encode()).hexdigest()}
                    for p in result.prompts],
    }


def by_speedup(data: dict) -> list[tuple[str, dict]]:
    return sorted(data["methods"].items(), key=lambda item: -item[1]["speedup"])


def markdown_table(data: dict) -> str:
    lossless = "lossless rate" + (" (informational)" if data["lossless_informational"] else "")
    rows = [f"| method | tokens/s | speedup | mean accepted tokens | target forwards | {lossless} "
            "| peak memory (MB) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, m in by_speedup(data):
        rows.append(f"| {name} | {m['tokens_per_s']:.1f} | {m['speedup']:.2f}x | "
                    f"{m['mean_accepted_tokens']:.2f} | {m['target_forwards']} | "
                    f"{m['lossless_rate']:.0%} | {m['peak_memory_mb']:.0f} |")
    return "\n".join(rows)


def time_split_table(data: dict) -> str:
    """Where each tokenforge method's time went (first timing of each prompt), or "" when no
    method has timers (a results.json from before time_split existed has none either)."""
    split = [(name, m["time_split"]) for name, m in by_speedup(data) if m.get("time_split")]
    if not split:
        return ""
    rows = ["| method | draft s | verify s | other s | draft share | draft overlap |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, t in split:
        overlap = f"{t['overlap']:.2f}" if "overlap" in t else "-"
        rows.append(f"| {name} | {t['draft_s']:.2f} | {t['verify_s']:.2f} | {t['other_s']:.2f} | "
                    f"{t['draft_share']:.0%} | {overlap} |")
    return "\n".join(rows)


def markdown_report(data: dict) -> str:
    dataset, settings, versions = data["dataset"], data["settings"], data["versions"]
    draft = f" (draft: {data['draft_model']})" if data["draft_model"] else ""
    decoding = ("greedy" if settings["greedy"]
                else f"sampling at temperature {settings['temperature']}, seed {settings['seed']}")
    warmup = (f"{settings['warmup']} untimed warm-up generation(s) per method on prompt "
              f"`{dataset['warmup_prompt']}`"
              + (" (also a measured prompt: the set has no other)"
                 if dataset["warmup_in_measured_set"] else " (not a measured prompt)"))
    lossless = ("share of prompts whose token ids equal vanilla's exactly, length included"
                + ("; informational under sampling, where methods draw different random "
                   "numbers" if data["lossless_informational"] else ""))
    split = time_split_table(data)
    lines = [
        f"# tokenforge bench: {data['model']}{draft} on {dataset['name']}",
        "",
        f"- Machine: {data['device_name']} ({data['device']}, {data['dtype']}, "
        f"{data['threads']} threads), {data['platform']}",
        f"- Versions: tokenforge {versions['tokenforge']}, torch {versions['torch']}, "
        f"transformers {versions['transformers']}, Python {versions['python']}",
        f"- Prompts: {dataset['n_prompts']} of `{dataset['name']}`"
        + (f", category {dataset['category']}" if dataset["category"] else "")
        + f" ({dataset['source']}; prompts sha256 {dataset['sha256'][:12]})"
        + (f"; {len(dataset['skipped_prompts'])} skipped (prompt + max_new_tokens exceed the "
           "context)" if dataset["skipped_prompts"] else ""),
        f"- Decoding: {decoding}, max_new_tokens {settings['max_new_tokens']}; each prompt timed "
        f"{settings['repeats']} time(s), median kept; {warmup}",
        f"- Run: {data['created']}" + (f", `{data['command']}`" if data["command"] else ""),
        "",
        markdown_table(data),
        "",
        *([split, "",
           "- Time split: seconds inside the engine's timers (drafting, the target's verification "
           "forward, the rest), summed over the prompts. Draft overlap (methods that draft "
           "concurrently): draft time hidden ÷ draft time, i.e. the wall time saved against "
           "running each round's draft and target work in turn.", ""]
          if split else []),
        "- tokens/s: new tokens ÷ seconds over all prompts; speedup: tokens/s ÷ vanilla's in this "
        "run. Timing starts from token ids (tokenization excluded) and includes everything else.",
        "- New tokens are counted the same way for every method: the ids it returned, cut at and "
        "including the first EOS.",
        "- Mean accepted tokens: new tokens ÷ target forwards (the prefill counts; plain decoding "
        "scores 1.00). The transformers baselines' forwards are counted by a hook on the target.",
        f"- Lossless rate: {lossless}.",
        f"- {STATEFUL_NOTE}",
        f"- Peak memory: {MEMORY_NOTES.get(data['memory_kind'], data['memory_kind'])}.",
    ]
    return "\n".join(lines) + "\n"


def plot_speedup(data: dict, path: Path) -> None:
    """Speedup bars, sorted, each annotated with its mean accepted tokens."""
    from matplotlib.figure import Figure

    methods = by_speedup(data)
    fig = Figure(figsize=(max(6.0, 1.0 + 0.9 * len(methods)), 4.2), layout="constrained")
    ax = fig.add_subplot()
    colors = ["tab:blue" if m["kind"] == "tokenforge" else "tab:gray" for _, m in methods]
    bars = ax.bar([name for name, _ in methods], [m["speedup"] for _, m in methods], color=colors)
    ax.bar_label(bars, labels=[f"{m['mean_accepted_tokens']:.2f} tok/fwd" for _, m in methods],
                 fontsize=8, padding=2)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_ylabel(f"speedup vs {REFERENCE} (tokens/s)")
    ax.set_title(f"{data['model']} on {data['dataset']['name']}, {data['device_name']} "
                 f"({data['dtype']}); blue: tokenforge, grey: transformers", fontsize=9)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.margins(y=0.15)
    fig.savefig(path, dpi=120)


def write_outputs(result: BenchResult, out_dir: Path, command: str | None = None) -> dict:
    """Write results.json, report.md and speedup.png into `out_dir`; returns the results dict."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        data = results_json(result, command)
        (out_dir / "results.json").write_text(json.dumps(data, indent=2) + "\n")
        (out_dir / "report.md").write_text(markdown_report(data))
        plot_speedup(data, out_dir / "speedup.png")
    except OSError as err:
        raise TokenforgeError(f"cannot write the benchmark outputs to {out_dir}: {err}") from None
    return data
