"""`tokenforge bench --model demo-dllm`: the diffusion decoders side by side, speed against quality.

Every setting (a decoder with its options, written `name` or `name:key=value:key=value`) fills
the same canvases: each prompt, left-truncated to its last (training length - gen_length)
tokens, then `gen_length` masks. The reference, `llada` at one token per step, always runs.
Names of AR methods (`vanilla`, `token-recycling`, ...) run on the AR `--ar-model` (`demo`)
from the same prompt ids for up to gen_length tokens: the question users ask, whether
diffusion decoding pays here.

Per setting:
- speed: wall time per prompt (the prompts rotate the order of the settings, so load changes
  land on all alike), speedup = the reference's total time / the setting's, with a paired
  bootstrap interval over prompts; forwards per canvas position; query tokens forwarded per
  position (the compute a cache saves); tokens/s of the output (cut at the first EOS).
- quality: (a) agreement with the reference: the share of the gen_length positions whose token
  equals the reference's (each output cut at its first EOS and padded with EOS); (b) bits per
  byte of the output under the AR judge (`--ar-model`) given the prompt, lower is better, pooled
  over prompts; (c) the share of outputs after which prompt + output is still valid Python
  (complete, or an incomplete prefix that can be continued: `codeop`'s test).
- drift: for a cached setting, agreement with the same setting without cache (`cache=none`)
  when that twin is in the run too.
"""

from __future__ import annotations

import codeop
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from tokenforge.bench.datasets import encode, load_dataset, prompts_sha256
from tokenforge.bench.stats import Bootstrap
from tokenforge.bench.system import MachineLoad, Snapshot, environment
from tokenforge.decoding.registry import get_method
from tokenforge.dllm.api import diffuse, diffusion_model, make_decoder
from tokenforge.dllm.registry import get_decoder, is_diffusion_method
from tokenforge.errors import InvalidOptionError

REFERENCE = "llada:tokens_per_step=1"


@dataclass
class Setting:
    label: str
    method: str
    options: dict
    family: str  # diffusion | ar
    times: list[float] = field(default_factory=list)
    outputs: list[list[int]] = field(default_factory=list)
    stats: list[dict] = field(default_factory=list)


def parse_setting(text: str) -> Setting:
    """`fast-dllm:cache=prefix:threshold=0.8` -> Setting (options checked by the method)."""
    name, *pairs = [part.strip() for part in text.split(":")]
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidOptionError(f"a setting is name:key=value:..., got '{text}'")
        options[key] = value
    if is_diffusion_method(name):
        get_decoder(name).parse(options)
        return Setting(text, name, options, "diffusion")
    get_method(name).parse(options)  # an unknown name is refused here, with the AR list
    return Setting(text, name, options, "ar")


@dataclass
class DiffusionBenchConfig:
    model: str
    settings: list[str]
    dataset: str
    ar_model: str = "demo"
    limit: int | None = None
    gen_length: int = 64
    device: str = "cpu"
    warmup: int = 1


def padded(ids: list[int], eos: int, length: int) -> list[int]:
    ids = ids[:ids.index(eos)] if eos in ids else list(ids)
    return (ids + [eos] * length)[:length]


def agreement(a: list[int], b: list[int], eos: int, length: int) -> float:
    pa, pb = padded(a, eos, length), padded(b, eos, length)
    return sum(x == y for x, y in zip(pa, pb)) / length


def parses(text: str) -> bool:
    """Valid Python so far: compiles, or is an incomplete prefix of something that would."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            codeop.compile_command(text, symbol="exec")
        return True
    except (SyntaxError, ValueError, OverflowError):
        return False


@torch.no_grad()
def judge_nats(judge, prompt: list[int], output: list[int]) -> float:
    """Nats of `output` after `prompt` under the AR judge."""
    if not output:
        return 0.0
    ids = torch.tensor([prompt + output], device=judge.device)
    logits = judge.model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
    return torch.nn.functional.cross_entropy(logits, ids[0, len(prompt):], reduction="sum").item()


def run_diffusion_bench(config: DiffusionBenchConfig, progress: bool = True) -> dict:
    from tokenforge.decoding.api import generate, make_drafter
    from tokenforge.models.load import load_model

    settings = [parse_setting(s) for s in [REFERENCE] + [s for s in config.settings
                                                          if s != REFERENCE]]
    dlm = diffusion_model(load_model(config.model, device=config.device))
    judge = load_model(config.ar_model, device=config.device)
    budget = dlm.train_len - config.gen_length
    if budget < 8:
        raise InvalidOptionError(f"gen_length {config.gen_length} leaves fewer than 8 prompt "
                                 f"positions in the model's training length {dlm.train_len}")
    dataset = load_dataset(config.dataset)
    prompts = dataset.prompts[:config.limit] if config.limit else dataset.prompts
    prompt_ids = [encode(dlm.loaded, p)[-budget:] for p in prompts]
    spare = dataset.prompts[len(prompts):len(prompts) + 1]  # the warm-up, when the set has one
    warmup_ids = encode(dlm.loaded, spare[0])[-budget:] if spare else prompt_ids[0]
    decoders = {s.label: make_decoder(s.method, **s.options) for s in settings
                if s.family == "diffusion"}
    drafters = {s.label: make_drafter(judge, s.method, **s.options) for s in settings
                if s.family == "ar"}

    def once(setting: Setting, ids: list[int]):
        if setting.family == "diffusion":
            result = diffuse(dlm, ids, setting.method, config.gen_length,
                             decoder=decoders[setting.label])
            return result.canvas, result.stats.as_dict()
        result = generate(judge, ids, setting.method, max_new_tokens=config.gen_length,
                          drafter=drafters[setting.label])
        return result.token_ids, result.stats.as_dict()

    for setting in settings:  # warm-up, untimed
        for _ in range(config.warmup):
            once(setting, warmup_ids)
    before = Snapshot.now()
    bar = tqdm(total=len(prompts) * len(settings), disable=not progress, desc="dllm bench")
    for i, ids in enumerate(prompt_ids):
        order = settings[i % len(settings):] + settings[:i % len(settings)]
        for setting in order:
            began = time.perf_counter()
            output, stats = once(setting, ids)
            setting.times.append(time.perf_counter() - began)
            setting.outputs.append(output)
            setting.stats.append(stats)
            bar.update(1)
    bar.close()
    load = MachineLoad.between(before, Snapshot.now(), dlm.loaded.device)
    return score(settings, prompt_ids, dlm, judge, config, dataset, prompts, load.as_dict())


def tokens_forwarded(stats: dict) -> int:
    """Query tokens over every forward (an AR generation's, prompt included, from its counts)."""
    if "tokens_forwarded" in stats:
        return stats["tokens_forwarded"]
    return stats.get("prompt_tokens", 0) + sum(int(size) * count for size, count in
                                               stats.get("forward_sizes", {}).items())


def twin_key(s: Setting) -> tuple:
    """Settings equal but for their cache share this key."""
    return s.method, tuple(sorted((k, v) for k, v in s.options.items() if k != "cache"))


def score(settings: list[Setting], prompt_ids, dlm, judge, config, dataset, prompts,
          load) -> dict:
    eos, length = dlm.eos_id, config.gen_length
    reference = settings[0]
    bootstrap = Bootstrap()
    ones = [1.0] * len(prompt_ids)
    twins = {twin_key(s): s for s in settings if s.options.get("cache") == "none"}
    prompt_texts = [dlm.tokenizer.decode(p) for p in prompt_ids]
    rows = []
    for s in settings:
        cut = [o[:o.index(eos)] if eos in o else list(o) for o in s.outputs]
        texts = [dlm.tokenizer.decode(o) for o in cut]
        nats = sum(judge_nats(judge, p, o) for p, o in zip(prompt_ids, cut))
        nbytes = sum(len(t.encode("utf-8")) for t in texts)
        forwards = sum(st["target_forwards"] for st in s.stats)
        row = {
            "label": s.label, "method": s.method, "options": s.options, "family": s.family,
            "seconds": round(sum(s.times), 3),
            "speedup": sum(reference.times) / sum(s.times),
            "speedup_interval": bootstrap.speedup_interval(ones, s.times, ones, reference.times),
            "forwards_per_token": forwards / (length * len(prompt_ids)) if s.family == "diffusion"
            else forwards / max(1, sum(len(c) for c in cut)),
            "tokens_forwarded_per_token": sum(map(tokens_forwarded, s.stats))
            / (length * len(prompt_ids)),
            "new_tokens": sum(len(c) for c in cut),
            "tokens_per_s": sum(len(c) for c in cut) / sum(s.times),
            "agreement": sum(agreement(o, r, eos, length) for o, r in
                             zip(s.outputs, reference.outputs)) / len(prompt_ids),
            "judge_bits_per_byte": nats / math.log(2) / nbytes if nbytes else None,
            "parse_rate": sum(parses(p + t) for p, t in zip(prompt_texts, texts)) / len(texts),
            "eos_stops": sum(st.get("finish_reason") == "eos" for st in s.stats),
            "outputs": cut,
        }
        twin = twins.get(twin_key(s))
        if twin is not None and twin is not s:
            row["cache_agreement"] = sum(agreement(o, t, eos, length) for o, t in
                                         zip(s.outputs, twin.outputs)) / len(prompt_ids)
        extra = [st.get("extra", {}) for st in s.stats]
        if any(extra):
            keys = sorted({k for e in extra for k in e})
            row["extra"] = {k: sum(e.get(k, 0) for e in extra) / len(extra) for k in keys}
        rows.append(row)
    ref_bpb = rows[0]["judge_bits_per_byte"]
    for row in rows:
        row["quality_ratio"] = (row["judge_bits_per_byte"] / ref_bpb
                                if ref_bpb and row["judge_bits_per_byte"] else None)
    return {
        "kind": "diffusion",
        "model": config.model, "ar_model": config.ar_model, "dataset": config.dataset,
        "dataset_source": dataset.source, "prompts_sha256": prompts_sha256(prompts),
        "n_prompts": len(prompt_ids), "gen_length": length,
        "prompt_tokens_kept": dlm.train_len - length,
        "reference": REFERENCE, "settings": rows, "machine_load": load,
        **environment(dlm.loaded.device, dlm.loaded.dtype),
    }


def markdown(data: dict) -> str:
    head = ("| setting | speedup vs llada-1 [95% CI] | forwards / position | tokens forwarded / "
            "position | tokens/s | agreement (a) | judge bits/byte (b) | parses (c) | cache "
            "agreement |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in data["settings"]:
        ci = r["speedup_interval"]
        interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
        bpb = f"{r['judge_bits_per_byte']:.3f}" if r["judge_bits_per_byte"] else "n/a"
        cache = f"{r['cache_agreement']:.1%}" if "cache_agreement" in r else ""
        label = r["label"] + (f" ({data['ar_model']}, AR)" if r["family"] == "ar" else "")
        lines.append(f"| {label} | {r['speedup']:.2f}x{interval} | {r['forwards_per_token']:.3f} "
                     f"| {r['tokens_forwarded_per_token']:.1f} | {r['tokens_per_s']:.1f} | "
                     f"{r['agreement']:.1%} | {bpb} | {r['parse_rate']:.0%} | {cache} |")
    return "\n".join(lines)


def report(data: dict, command: str | None) -> str:
    load = data.get("machine_load") or {}
    busy = f"other processes kept about {load.get('other_load') or 0:.1f} threads busy"
    if load.get("busy"):
        busy += " (a busy machine: " + "; ".join(load["warnings"]) + ")"
    return f"""# Diffusion decoding benchmark: {data['model']}

- Command: `{command or 'n/a'}`
- Prompts: {data['n_prompts']} from {data['dataset']} ({data['dataset_source']}), each cut to its
  last {data['prompt_tokens_kept']} tokens; canvas of {data['gen_length']} positions; greedy.
- Machine: {data['device_name']} ({data['device']}, {data['threads']} threads), {data['dtype']};
  {busy}
- Reference: `{data['reference']}` (speedup 1.00x, agreement 100% by definition). AR rows run
  on `{data['ar_model']}`, which is also the judge of (b).

{markdown(data)}

(a) share of canvas positions equal to the reference's; (b) bits per byte of the output under
`{data['ar_model']}` given the prompt (lower is better); (c) prompt + output still valid Python.
Cache agreement: against the same setting with `cache=none` (the caches' drift).
"""


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 5.2))
    colors = plt.get_cmap("tab20").colors
    markers = "oD^v<>ph*P"
    for i, r in enumerate(data["settings"]):
        label = r["label"] + (f" ({data['ar_model']}, AR)" if r["family"] == "ar" else "")
        style = dict(color=colors[i % len(colors)], s=60 if r["family"] == "ar" else 36,
                     marker="s" if r["family"] == "ar" else markers[i % len(markers)])
        for ax, key in zip(axes, ("judge_bits_per_byte", "agreement")):
            if r[key] is not None:
                ax.scatter(r["speedup"], r[key], label=label if ax is axes[0] else None,
                           **style)
    axes[0].set_ylabel(f"bits/byte under {data['ar_model']} (lower is better)")
    axes[1].set_ylabel("agreement with llada at 1 token/step")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("speedup over llada at 1 token/step (wall time)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{data['model']}: {data['n_prompts']} {data['dataset']} prompts, "
                 f"{data['gen_length']} positions ({data['device_name']})", fontsize=10)
    fig.legend(loc="center right", fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.83, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(data: dict, out: Path, command: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = dict(data, command=command)
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "report.md").write_text(report(data, command))
    plot(data, out / "speed_quality.png")
