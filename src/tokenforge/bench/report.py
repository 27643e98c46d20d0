"""The benchmark's outputs: `results.json` (versioned schema), `report.md` and `speedup.png`.

`report.md` and the plot are made from the results.json dict alone, so they can be remade from
a saved file (`markdown_report(json.load(...))`).

results.json, schema_version 2 (new in 2: marked +):
    schema_version, created, command, model, draft_model, device, device_name, dtype, threads,
    platform, versions {tokenforge, torch, transformers, python}, memory_kind,
    + memory_pass {id, prompt_tokens}: the prompt of the peak-memory pass,
    dataset {name, source, sha256, category, n_prompts, skipped_prompts, warmup_prompt,
             warmup_in_measured_set},
    settings {max_new_tokens, temperature, greedy, repeats, warmup, seed, limit,
              + interleaved (true: methods rotate per prompt, see runner.py),
              + guide: null, or the GuideSpec's fields that are set (json_schema, json_object,
                regex, lark, monitor, repilot, deny_vulnerabilities): every method and vanilla
                ran under it, + unguided_left_out: the baselines `all` left out for it},
    reference ("vanilla"), lossless_informational (true under sampling),
    + machine_load {device, cores, threads, load_before, load_after (1-minute load averages,
                    null where the system has none), cpu_s, wall_s, cpu_per_wall (this process
                    over the timed part), other_load, busy, warnings [str], rule (str)},
    + bootstrap {resamples, confidence, seed, unit ("prompt"), method},
    + cost_curves {target: {seconds {q: s}, prefix_tokens, source ("measured" | "replayed")},
                   draft: the same, or null when no tokenforge method used a draft model},
    + calibration_replayed_from: null, or {path, created, model, draft_model, device_name,
                                           dtype} of the results.json replayed,
    methods {name: {kind, paper, options, + bench_options (the options the benchmark set:
                    calibrate, or a replayed tree_size), n_prompts, new_tokens, seconds,
                    tokens_per_s, speedup, + speedup_ci95 ([low, high] or null with one prompt),
                    + speedup_vs_hf_greedy, + speedup_vs_hf_greedy_ci95 (null without hf-greedy),
                    + modelled_speedup (tokenforge methods; null for the baselines),
                    mean_accepted_tokens, target_forwards,
                    + forward_sizes {q: forwards after the prefill} (null for the baselines),
                    + draft_forward_sizes {q: the draft model's forwards after its prefill}
                      ({} without a draft model; null for the baselines),
                    lossless_rate, + median_first_divergence (over the prompts that differ;
                    null when none does), peak_memory_mb,
                    + backend, + sampler, + dtype, + draft_dtype (null without a draft model),
                    + calibration (what the drafter measured and chose; {} for most methods),
                    time_split (tokenforge methods; null for the transformers baselines):
                        {prefill_s, draft_s, verify_s, other_s, total_s, draft_share[, overlap (pearl)]
                         [, + guide_s, + guide_share (guided: the guide's time, inside the others)]},
                    prompts [{id, prompt_tokens, new_tokens, target_forwards, seconds, lossless,
                              + first_divergence (null when identical to vanilla's),
                              output_sha1}]}}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from tokenforge.bench.modelled import COST_REPEATS
from tokenforge.bench.runner import HF_REFERENCE, REFERENCE, BenchResult, MethodResult
from tokenforge.errors import TokenforgeError

SCHEMA_VERSION = 2
STATEFUL_NOTE = ("Each tokenforge method's drafter is built once and reused for the warm-up and "
                 "every prompt, so stateful drafters (token-recycling's adjacency matrix, aded's "
                 "n-gram table) start each prompt with what the earlier ones taught them, as in a "
                 "long-running server; prompts run in dataset order. With repeats, such a "
                 "drafter meets a prompt again after having seen its continuation.")
INTERLEAVE_NOTE = ("Order: interleaved. For prompt i every method runs in turn, starting at "
                   "method i mod M and wrapping around; each repeat is a full rotation; the "
                   "median time per (method, prompt) is kept. A change of machine load during "
                   "the run thus lands on every method alike rather than on whichever ran then.")
MEMORY_NOTES = {
    "cuda_max_allocated": "torch.cuda.max_memory_allocated",
    "rss_peak": "peak resident set size of the process",
    "rss_peak_since_start": "peak resident set size since the process started (this system "
                            "does not allow a reset, so later methods show at least the earlier "
                            "peaks)",
}
BASELINE_MODEL_NOTE = ("The transformers baselines get no modelled speedup: `generate()` runs "
                       "transformers' own forward, not the backend whose costs were measured, "
                       "and their forwards are counted by a hook, not by size.")


def results_json(result: BenchResult, command: str | None = None) -> dict:
    config, replay, curves = result.config, result.replay, result.cost_curves
    return {
        "schema_version": SCHEMA_VERSION,
        "created": result.created,
        "command": command,
        "model": config.model,
        "draft_model": config.draft_model,
        **result.environment,
        "memory_kind": result.memory_kind,
        "memory_pass": result.memory_prompt,
        "dataset": result.dataset,
        "settings": {"max_new_tokens": config.max_new_tokens, "temperature": config.temperature,
                     "greedy": config.greedy, "repeats": config.repeats,
                     "warmup": config.warmup, "seed": config.seed, "limit": config.limit,
                     "interleaved": True, "guide": guide_json(config.guide),
                     "unguided_left_out": result.unguided_left_out},
        "reference": REFERENCE,
        "lossless_informational": not config.greedy,
        "machine_load": result.machine_load.as_dict(),
        "bootstrap": result.bootstrap.as_dict(),
        "cost_curves": {role: curves[role].as_dict() if role in curves else None
                        for role in ("target", "draft")},
        "calibration_replayed_from": None if replay is None else {"path": replay.path,
                                                                  **replay.origin},
        "methods": {m.name: method_json(m) for m in result.methods},
    }


def guide_json(spec) -> dict | None:
    """The fields of a GuideSpec that are set; None for an unguided run."""
    if spec is None or spec.empty:
        return None
    return {key: value for key, value in asdict(spec).items() if value not in (None, False)}


def method_json(result: MethodResult) -> dict:
    return {
        "kind": result.plan.kind, "paper": result.plan.spec.paper, "options": result.plan.options,
        "bench_options": result.plan.bench_options,
        "n_prompts": len(result.prompts), "new_tokens": result.new_tokens,
        "seconds": result.seconds, "tokens_per_s": result.tokens_per_s,
        "speedup": result.speedup, "speedup_ci95": as_list(result.speedup_ci95),
        "speedup_vs_hf_greedy": result.speedup_vs_hf_greedy,
        "speedup_vs_hf_greedy_ci95": as_list(result.speedup_vs_hf_greedy_ci95),
        "modelled_speedup": result.modelled_speedup,
        "mean_accepted_tokens": result.mean_accepted_tokens,
        "target_forwards": result.target_forwards,
        "forward_sizes": keyed_by_str(result.forward_sizes),
        "draft_forward_sizes": keyed_by_str(result.draft_forward_sizes),
        "lossless_rate": result.lossless_rate,
        "median_first_divergence": result.median_first_divergence,
        "peak_memory_mb": result.peak_memory_mb,
        "backend": result.backend, "sampler": result.sampler, "dtype": result.dtype,
        "draft_dtype": result.draft_dtype, "calibration": result.calibration,
        "time_split": result.time_split,
        "prompts": [{"id": p.prompt_id, "prompt_tokens": p.prompt_tokens,
                     "new_tokens": p.new_tokens, "target_forwards": p.target_forwards,
                     "seconds": p.seconds, "lossless": p.lossless,
                     "first_divergence": p.first_divergence,
                     "output_sha1": hashlib.sha1(json.dumps(p.token_ids).encode()).hexdigest()}
                    for p in result.prompts],
    }


def as_list(interval: tuple[float, float] | None) -> list[float] | None:
    return None if interval is None else list(interval)


def keyed_by_str(counts: dict[int, int] | None) -> dict[str, int] | None:
    """JSON object keys are strings: written so, the dict equals its reloaded self."""
    return None if counts is None else {str(q): n for q, n in counts.items()}


def by_speedup(data: dict) -> list[tuple[str, dict]]:
    return sorted(data["methods"].items(), key=lambda item: -item[1]["speedup"])


def with_interval(value: float, interval: list[float] | None) -> str:
    """`1.45x [1.38, 1.52]`; `[n/a]` where no interval exists (a single prompt)."""
    bounds = "n/a" if interval is None else f"{interval[0]:.2f}, {interval[1]:.2f}"
    return f"{value:.2f}x [{bounds}]"


def markdown_table(data: dict) -> str:
    lossless = "lossless rate" + (" (informational)" if data["lossless_informational"] else "")
    hf = HF_REFERENCE in data["methods"]
    vs_hf = f" vs {HF_REFERENCE} [95% CI] |" if hf else ""
    rows = [f"| method | tokens/s | speedup [95% CI] | modelled speedup |{vs_hf} mean accepted "
            f"tokens | target forwards | {lossless} | peak memory (MB) |",
            "| --- | ---: | ---: | ---: |" + (" ---: |" if hf else "")
            + " ---: | ---: | ---: | ---: |"]
    for name, m in by_speedup(data):
        modelled = "-" if m["modelled_speedup"] is None else f"{m['modelled_speedup']:.2f}x"
        hf_cell = (f" {with_interval(m['speedup_vs_hf_greedy'], m['speedup_vs_hf_greedy_ci95'])}"
                   " |" if hf else "")
        rows.append(f"| {name} | {m['tokens_per_s']:.1f} | "
                    f"{with_interval(m['speedup'], m['speedup_ci95'])} | {modelled} |{hf_cell} "
                    f"{m['mean_accepted_tokens']:.2f} | {m['target_forwards']} | "
                    f"{m['lossless_rate']:.0%} | {m['peak_memory_mb']:.0f} |")
    return "\n".join(rows)


def time_split_table(data: dict) -> str:
    """Where each tokenforge method's time went (first timing of each prompt), or "" when no
    method has timers (a results.json from before time_split existed has none either)."""
    split = [(name, m["time_split"]) for name, m in by_speedup(data) if m.get("time_split")]
    if not split:
        return ""
    guided = any("guide_s" in t for _, t in split)
    rows = ["| method | prefill s | draft s | verify s | other s | other share | draft share "
            "| draft overlap |" + (" guide s | guide share |" if guided else ""),
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
            + (" ---: | ---: |" if guided else "")]
    for name, t in split:
        overlap = f"{t['overlap']:.2f}" if "overlap" in t else "-"
        other_share = t["other_s"] / t["total_s"] if t["total_s"] else 0.0
        guide = (f" {t['guide_s']:.3f} | {t['guide_share']:.1%} |" if "guide_s" in t
                 else " - | - |") if guided else ""
        rows.append(f"| {name} | {t.get('prefill_s', 0.0):.2f} | {t['draft_s']:.2f} | "
                    f"{t['verify_s']:.2f} | {t['other_s']:.2f} | {other_share:.1%} | "
                    f"{t['draft_share']:.0%} | {overlap} |{guide}")
    return "\n".join(rows)


def divergence_table(data: dict) -> str:
    """Methods whose ids are not all identical to vanilla's (e.g. bfloat16), or ""."""
    differing = [(name, m) for name, m in by_speedup(data) if m["lossless_rate"] < 1]
    if not differing:
        return ""
    rows = ["| method | identical to vanilla | median first divergence (token index) |",
            "| --- | ---: | ---: |"]
    for name, m in differing:
        identical = sum(bool(p["lossless"]) for p in m["prompts"])
        median = m["median_first_divergence"]
        rows.append(f"| {name} | {identical}/{m['n_prompts']} ({m['lossless_rate']:.0%}) | "
                    f"{'-' if median is None else f'{median:g}'} |")
    return "\n".join(rows)


def calibration_cell(m: dict) -> str:
    calibration = m["calibration"]
    if not calibration:
        return "-"
    if "tree_size" not in calibration:
        return "see results.json"
    if calibration["tree_size"] is None:
        return "tree size not chosen yet (exploration unfinished)"
    if "tree_size" in m["bench_options"]:
        how = "replayed"
    elif m["options"].get("tree_size", "auto") != "auto":
        how = "set by the user"
    elif m["options"].get("calibrate"):
        how = "chosen in this run"
    else:
        how = "chosen in this run or read from the user cache"
    return f"tree size {calibration['tree_size']} ({how})"


def methods_table(data: dict) -> str:
    rows = ["| method | backend | sampler | dtype | calibration |", "| --- | --- | --- | --- | --- |"]
    for name, m in data["methods"].items():
        dtype = m["dtype"] + (f", draft {m['draft_dtype']}" if m["draft_dtype"] else "")
        rows.append(f"| {name} | {m['backend']} | {m['sampler']} | {dtype} | "
                    f"{calibration_cell(m)} |")
    return "\n".join(rows)


def cost_curve_table(data: dict) -> str:
    curves = {role: c for role, c in data["cost_curves"].items() if c is not None}
    sizes = sorted({int(q) for c in curves.values() for q in c["seconds"]})
    rows = ["| tokens per forward | " + " | ".join(f"{role} ms" for role in curves) + " |",
            "| ---: |" + " ---: |" * len(curves)]
    for q in sizes:
        cells = [f"{c['seconds'][str(q)] * 1e3:.2f}" if str(q) in c["seconds"] else "-"
                 for c in curves.values()]
        rows.append(f"| {q} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def cost_curve_note(data: dict) -> str:
    curves = {role: c for role, c in data["cost_curves"].items() if c is not None}
    parts = [f"{role}: after a {c['prefix_tokens']}-token prefix, {c['source']}"
             for role, c in curves.items()]
    replayed = data["calibration_replayed_from"]
    origin = ""
    if replayed is not None:
        origin = (f"; replayed from `{replayed['path']}` ({replayed['model']} on "
                  f"{replayed['device_name']}, {replayed['dtype']}, run {replayed['created']})")
    return (f"- Cost curves (one forward of q tokens, median of {COST_REPEATS} timings, linear "
            f"between the sizes): {'; '.join(parts)}{origin}.")


def load_lines(load: dict) -> list[str]:
    def average(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    line = (f"- Machine load: 1-minute load average {average(load['load_before'])} before and "
            f"{average(load['load_after'])} after the timed part; this process ran "
            f"{load['cpu_per_wall']:.2f} s of CPU per second of wall time over it; "
            f"{load['cores']} usable core(s), {load['threads']} used by the run ("
            + ("busy" if load["busy"] else "not busy") + " by the rule below)")
    if not load["busy"]:
        return [line]
    return [f"> **Warning: the machine was busy during the timed part**: "
            f"{'; '.join(load['warnings'])}. Ratios from this run may be off.", "", line]


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
    boot = data["bootstrap"]
    interval = (f"{boot['confidence']:.0%} paired bootstrap interval over prompts: "
                f"{boot['resamples']} resamples of the prompts with replacement (seed "
                f"{boot['seed']}), each giving the method's summed tokens ÷ summed seconds over "
                "the reference's on the same resampled prompts; the percentile interval")
    if dataset["n_prompts"] < 2:
        interval += " (n/a here: with a single prompt there is nothing to resample)"
    vs_hf = (f" The vs {HF_REFERENCE} column is the same against transformers' plain "
             "`generate()`." if HF_REFERENCE in data["methods"] else "")
    memory = data["memory_pass"]
    split, divergence = time_split_table(data), divergence_table(data)
    guide = settings.get("guide")
    guided = []
    if guide is not None:
        kinds = ", ".join(f"{key}" if value is True else f"{key} {json.dumps(value)[:80]}"
                          for key, value in guide.items())
        left_out = settings.get("unguided_left_out") or []
        guided = [f"- Guided: {kinds}. Vanilla and every method ran under the same guide, so "
                  "the lossless rate compares guided methods with guided vanilla; the guide's "
                  "time is inside the timers (guide s in the time split)"
                  + (f"; left out (they cannot take a guide): {', '.join(left_out)}"
                     if left_out else "")]
    lines = [
        f"# tokenforge bench: {data['model']}{draft} on {dataset['name']}",
        "",
        *load_lines(data["machine_load"]),
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
        *guided,
        f"- {INTERLEAVE_NOTE}",
        f"- Run: {data['created']}" + (f", `{data['command']}`" if data["command"] else ""),
        "",
        markdown_table(data),
        "",
        *([divergence, "",
           "- Identity: prompts whose ids equal vanilla's exactly; first divergence: the index of "
           "the first new token that differs (the shorter length when one output is a prefix of "
           "the other), median over the prompts that differ.", ""] if divergence else []),
        *([split, "",
           "- Time split: seconds inside the engine's timers (the prompt's prefill, drafting, the "
           "target's tree forwards with verification, the rest: the loop itself, stopping, "
           "detokenizing), summed over the prompts. Draft overlap (methods that draft "
           "concurrently): draft time hidden ÷ draft time, i.e. the wall time saved against "
           "running each round's draft and target work in turn.", ""]
          if split else []),
        methods_table(data),
        "",
        cost_curve_table(data),
        "",
        cost_curve_note(data),
        "- tokens/s: new tokens ÷ seconds over all prompts; speedup: tokens/s ÷ vanilla's in this "
        "run. Timing starts from token ids (tokenization excluded) and includes everything else.",
        f"- [95% CI]: {interval}.{vs_hf}",
        "- Modelled speedup: vanilla's forwards priced on the target's cost curve ÷ the method's "
        "target forwards (by tokens per forward) plus its draft model's forwards (each with its "
        "own size, each step's catch-up over new tokens included) priced on the draft's curve; "
        "the prefills (the target's and the draft model's) left out. It counts model forwards "
        "only, one after another (drafting outside a forward, verification, Python overhead and "
        "pearl's overlap are not modelled), and does not move with the machine's load during the "
        "run; it moves only with the cost curves, measured in a few seconds at the start (replay "
        "curves measured on an idle machine with --calibration-from to compare runs). A gap "
        "between it and the measured speedup is overhead or noise, not the algorithm. "
        + BASELINE_MODEL_NOTE,
        "- New tokens are counted the same way for every method: the ids it returned, cut at and "
        "including the first EOS.",
        "- Mean accepted tokens: new tokens ÷ target forwards (the prefill counts; plain decoding "
        "scores 1.00). The transformers baselines' forwards are counted by a hook on the target.",
        f"- Lossless rate: {lossless}.",
        f"- {STATEFUL_NOTE}",
        f"- Busy machine: the run counts as {data['machine_load']['rule']}",
        "- Calibration: in a fresh run token-recycling measures its tree size afresh "
        "(`calibrate=true`, unless set with --method-option) rather than reusing the user "
        "cache; a run given an earlier results.json replays that run's tree sizes and cost "
        "curves.",
        f"- Peak memory: {MEMORY_NOTES.get(data['memory_kind'], data['memory_kind'])}, in a "
        f"separate untimed pass after the timed one: for each method in turn, the peak is reset "
        f"and one generation of the longest measured prompt (`{memory['id']}`, "
        f"{memory['prompt_tokens']} tokens) runs. Every method's decoder and both models are "
        "loaded throughout, so the figures share that baseline and differ by what a generation "
        "adds.",
    ]
    return "\n".join(lines) + "\n"


def plot_speedup(data: dict, path: Path) -> None:
    """Speedup bars, sorted, with their bootstrap interval as error bars, the modelled speedup
    as a marker, and each bar's mean accepted tokens inside it."""
    from matplotlib.figure import Figure

    methods = by_speedup(data)
    names = [name for name, _ in methods]
    speedups = [m["speedup"] for _, m in methods]
    fig = Figure(figsize=(max(6.0, 1.0 + 0.9 * len(methods)), 4.2), layout="constrained")
    ax = fig.add_subplot()
    colors = ["tab:blue" if m["kind"] == "tokenforge" else "tab:gray" for _, m in methods]
    bars = ax.bar(names, speedups, color=colors)
    below = [max(0.0, s - m["speedup_ci95"][0]) if m["speedup_ci95"] else 0.0
             for s, (_, m) in zip(speedups, methods)]
    above = [max(0.0, m["speedup_ci95"][1] - s) if m["speedup_ci95"] else 0.0
             for s, (_, m) in zip(speedups, methods)]
    ax.errorbar(names, speedups, yerr=[below, above], fmt="none", ecolor="black", capsize=3,
                linewidth=1, label="95% bootstrap interval")
    modelled = [(name, m["modelled_speedup"]) for name, m in methods
                if m["modelled_speedup"] is not None]
    if modelled:
        ax.scatter([n for n, _ in modelled], [v for _, v in modelled], marker="D", s=28,
                   color="tab:orange", edgecolor="black", zorder=3, label="modelled speedup")
    ax.bar_label(bars, labels=[f"{m['mean_accepted_tokens']:.2f}\ntok/fwd" for _, m in methods],
                 label_type="center", fontsize=7, color="white")
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_ylabel(f"speedup vs {REFERENCE} (tokens/s)")
    ax.set_title(f"{data['model']} on {data['dataset']['name']}\n{data['device_name']} "
                 f"({data['dtype']}); blue: tokenforge, grey: transformers", fontsize=9)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.legend(fontsize=7, loc="upper right")
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
