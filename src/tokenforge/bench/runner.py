"""Runs every method and baseline in one process, on the same prompts, counted the same way.

1. Plan: names and options are checked before any model loads (vanilla always first: it is the
   reference); with `calibration_from`, recorded tree sizes become options (bench/replay.py).
2. Cost curves: the target's forward cost by tokens per forward, and the draft model's when a
   tokenforge method uses one, measured once (or replayed) to price the modelled speedup
   (bench/modelled.py).
3. Decoders: each method's is built once: a tokenforge method gets one drafter from
   `make_drafter`, reused for every prompt, so stateful drafters (Token Recycling's matrix, ADED's
   n-gram table) carry their state from the warm-up through all prompts, as in a long-running
   server; a baseline gets one `HFDecoder`. Each runs its `warmup` untimed generations on the
   warm-up prompt (the first fitting prompt after the measured ones, or the first measured one
   when the set has no other), method after method.
4. The timed part, interleaved: for prompt i, every method runs in turn in a rotating order that
   starts at method i mod M, `repeats` full rotations, and the median time per (method, prompt)
   is kept. A change of machine load then lands on every method alike instead of on whichever
   ran at the time. Timing starts from token ids, so tokenization is excluded; everything else
   (drafting, forwards, verification, tokenforge's detokenization of the output) is included, the
   device synchronised on both sides. The machine's load around it is recorded (system.py).
5. Peak memory, in a separate untimed pass (interleaving would mix the methods' peaks): for each
   method in turn, the peak is reset and one generation of the longest measured prompt runs.
6. Scores: speedups over vanilla (and hf-greedy when it ran) with paired bootstrap intervals over
   prompts (stats.py), the modelled speedup, identity with vanilla's ids.

Guided (`config.guide`, a GuideSpec): every tokenforge method and vanilla run under the same guide,
each decoder with its own instance (a guide caches the states it has computed, so a shared one
would hand the later methods the earlier ones' work); `lossless` then compares guided methods with
guided vanilla. The transformers baselines cannot take a guide: named, they are refused; `all`
leaves them out and the results say so.

Token counting is the same for every method: the new ids the method returned, cut at and including
the first EOS (the engine's EOS set). `lossless` compares those ids with vanilla's, length included;
`first_divergence` says where they part. Token ids, forwards and timers of a prompt come from its
first timing.
"""

from __future__ import annotations

import logging
import statistics
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm import tqdm

from tokenforge.bench.baselines import BASELINES, HFDecoder
from tokenforge.bench.datasets import Dataset, Prompt, encode, load_dataset, prompts_sha256
from tokenforge.bench.modelled import (
    MeasuredCurve,
    measure_curve,
    modelled_speedup,
)
from tokenforge.bench.replay import Replay, bench_options, load_replay
from tokenforge.bench.stats import Bootstrap
from tokenforge.bench.system import MachineLoad, PeakMemory, Snapshot, environment, timed
from tokenforge.decoding.api import generate, make_drafter
from tokenforge.decoding.backends.base import BACKENDS
from tokenforge.decoding.engine import eos_token_ids
from tokenforge.decoding.registry import Method, all_methods, get_method
from tokenforge.decoding.sampling import SAMPLERS
from tokenforge.errors import DatasetError, InvalidOptionError, PromptError
from tokenforge.guides import GuideSpec, make_guide
from tokenforge.models.load import LoadedModel, load_model

REFERENCE = "vanilla"
HF_REFERENCE = "hf-greedy"  # the second reference, when it is in the run
TIMERS = ("prefill_s", "draft_s", "verify_s", "other_s", "total_s", "draft_hidden_s")  # per prompt
BOOTSTRAP = Bootstrap()
log = logging.getLogger("tokenforge.bench")


@dataclass
class BenchConfig:
    model: str
    methods: list[str]
    dataset: str
    draft_model: str | None = None
    limit: int | None = None
    category: str | None = None
    max_new_tokens: int = 128
    temperature: float = 0.0
    device: str = "auto"
    dtype: str = "auto"
    repeats: int = 1
    warmup: int = 1
    seed: int = 0
    method_options: dict[str, dict[str, str]] = field(default_factory=dict)
    calibration_from: Path | None = None  # an earlier results.json to replay (bench/replay.py)
    backend: str = "auto"  # tokenforge methods: auto (the fast path where it applies), static,
    # transformers
    sampler: str = "gumbel"  # tokenforge methods at temperature > 0: gumbel or rejection
    guide: GuideSpec | None = None  # the same guide for vanilla and every tokenforge method

    def __post_init__(self) -> None:
        for name, minimum in (("max_new_tokens", 1), ("repeats", 1), ("warmup", 0)):
            if getattr(self, name) < minimum:
                raise InvalidOptionError(f"{name} must be at least {minimum}")
        if self.limit is not None and self.limit < 1:
            raise InvalidOptionError("limit must be at least 1")
        if self.temperature < 0:
            raise InvalidOptionError("temperature must be >= 0 (0 = greedy)")
        if self.backend not in BACKENDS:
            raise InvalidOptionError(f"unknown backend '{self.backend}': use "
                                     f"{', '.join(BACKENDS)}")
        if self.sampler not in SAMPLERS:
            raise InvalidOptionError(f"unknown sampler '{self.sampler}': use {', '.join(SAMPLERS)}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class MethodPlan:
    spec: Method
    kind: str  # "tokenforge" | "transformers"
    options: dict
    bench_options: dict = field(default_factory=dict)  # set by the benchmark (bench/replay.py)


@dataclass
class Decoded:
    """One generation, as a decoder returns it."""

    ids: list[int]
    target_forwards: int
    time_split: dict[str, float] | None = None  # tokenforge methods: GenerationStats' timers
    # (and guide_s, the guide's time, when guided)
    forward_sizes: dict[int, int] | None = None  # tokenforge: target forwards after the prefill
    draft_forward_sizes: dict[int, int] | None = None  # the draft model's, prefill included


@dataclass
class PromptResult:
    prompt_id: str
    prompt_tokens: int
    token_ids: list[int]
    target_forwards: int
    seconds: float  # median over the repeats
    lossless: bool | None = None  # token ids == vanilla's, length included
    time_split: dict[str, float] | None = None  # tokenforge methods: GenerationStats' timers
    forward_sizes: dict[int, int] | None = None  # tokenforge methods: after the prefill
    draft_forward_sizes: dict[int, int] | None = None  # after the draft model's prefill
    first_divergence: int | None = None  # where the ids part from vanilla's; None if identical

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class MethodResult:
    plan: MethodPlan
    prompts: list[PromptResult]
    peak_memory_mb: float
    speedup: float = 0.0
    speedup_ci95: tuple[float, float] | None = None  # None with a single prompt
    speedup_vs_hf_greedy: float | None = None  # when hf-greedy ran
    speedup_vs_hf_greedy_ci95: tuple[float, float] | None = None
    modelled_speedup: float | None = None  # tokenforge methods (bench/modelled.py)
    lossless_rate: float = 0.0
    backend: str = ""
    sampler: str = ""
    dtype: str = ""
    draft_dtype: str | None = None  # methods that use the draft model
    calibration: dict = field(default_factory=dict)  # what the drafter measured and chose

    @property
    def name(self) -> str:
        return self.plan.spec.name

    @property
    def new_tokens(self) -> int:
        return sum(p.new_tokens for p in self.prompts)

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.prompts)

    @property
    def target_forwards(self) -> int:
        return sum(p.target_forwards for p in self.prompts)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    @property
    def mean_accepted_tokens(self) -> float:
        return self.new_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def forward_sizes(self) -> dict[int, int] | None:
        """Target forwards after the prefill by tokens per forward, over the prompts (None for
        the transformers baselines)."""
        return summed([p.forward_sizes for p in self.prompts])

    @property
    def draft_forward_sizes(self) -> dict[int, int] | None:
        """The draft model's forwards after its prefill, by tokens per forward, over the
        prompts ({} for methods without one, None for the transformers baselines)."""
        return summed([p.draft_forward_sizes for p in self.prompts])

    @property
    def median_first_divergence(self) -> float | None:
        """Over the prompts whose ids differ from vanilla's; None when none does."""
        found = [p.first_divergence for p in self.prompts if p.first_divergence is not None]
        return statistics.median(found) if found else None

    @property
    def time_split(self) -> dict[str, float] | None:
        """Where a tokenforge method's time went, summed over the prompts: draft_s, verify_s,
        other_s, total_s, draft_share (draft ÷ total) and, for a method that drafts concurrently
        (pearl), overlap = draft time hidden ÷ draft time. None for the transformers baselines."""
        splits = [p.time_split for p in self.prompts if p.time_split is not None]
        if not splits:
            return None
        total = {key: sum(split.get(key, 0.0) for split in splits) for key in splits[0]}
        total["draft_share"] = total["draft_s"] / total["total_s"] if total["total_s"] else 0.0
        if "guide_s" in total:
            total["guide_share"] = total["guide_s"] / total["total_s"] if total["total_s"] else 0.0
        if "draft_hidden_s" in total:
            total["overlap"] = (total.pop("draft_hidden_s") / total["draft_s"]
                                if total["draft_s"] else 0.0)
        return total


def summed(counts: list[dict[int, int] | None]) -> dict[int, int] | None:
    present = [c for c in counts if c is not None]
    if not present:
        return None
    total: Counter[int] = Counter()
    for count in present:
        total.update(count)
    return dict(sorted(total.items()))


@dataclass
class BenchResult:
    config: BenchConfig
    environment: dict
    dataset: dict
    memory_kind: str
    methods: list[MethodResult]
    created: str
    machine_load: MachineLoad
    cost_curves: dict[str, MeasuredCurve]  # "target", and "draft" when a method used one
    memory_prompt: dict  # the prompt of the memory pass: id, prompt_tokens
    replay: Replay | None = None
    unguided_left_out: list[str] = field(default_factory=list)  # `all`'s baselines, when guided
    bootstrap: Bootstrap = BOOTSTRAP


@dataclass
class Selected:
    prompt: Prompt
    ids: list[int]


def same_tokens(reference: list[int], output: list[int]) -> bool:
    """Lossless for one prompt: the same ids in the same order and the same number of them (a
    method that stops early, or runs on, is not lossless even if its ids are a prefix)."""
    return list(output) == list(reference)


def first_divergence(reference: list[int], output: list[int]) -> int | None:
    """The index of the first token that differs, the shorter length when one is a prefix of the
    other, or None when they are the same."""
    if same_tokens(reference, output):
        return None
    return next((i for i, (a, b) in enumerate(zip(reference, output)) if a != b),
                min(len(reference), len(output)))


def lossless_rate(reference: list[list[int]], outputs: list[list[int]]) -> float:
    if len(reference) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs for {len(reference)} reference prompts")
    return sum(map(same_tokens, reference, outputs)) / len(reference) if reference else 0.0


def count_tokens(ids: list[int], eos: set[int]) -> list[int]:
    """The new ids every method is scored on: cut at and including the first EOS."""
    for i, token in enumerate(ids):
        if token in eos:
            return list(ids[: i + 1])
    return list(ids)


def unguided_left_out(names: list[str], has_draft: bool) -> list[str]:
    """The baselines `all` would run but leaves out of a guided run (they cannot take a guide)."""
    if "all" not in names:
        return []
    return [m.name for m in BASELINES.values() if has_draft or not m.needs_draft]


def plan_methods(names: list[str], method_options: dict[str, dict[str, str]],
                 has_draft: bool, replay: Replay | None = None,
                 guided: bool = False) -> list[MethodPlan]:
    """Validate names and options before any model is loaded; `all` = every registered method and
    baseline that can run (the draft-model ones only with a draft model; guided, no baseline);
    vanilla goes first. The benchmark adds its own options (calibrate, replayed tree sizes:
    bench/replay.py)."""
    registered = {m.name: m for m in all_methods()}
    expanded: list[str] = [REFERENCE]
    for name in names:
        if name == "all":
            candidates = [*registered.values(), *([] if guided else BASELINES.values())]
            expanded += [m.name for m in candidates if has_draft or not m.needs_draft]
        else:
            expanded.append(name)
    plans = []
    for name in dict.fromkeys(expanded):
        if name in BASELINES and guided:
            raise InvalidOptionError(f"method '{name}' cannot take a guide (transformers' "
                                     "generate() would run unguided): leave it out of --methods "
                                     "when a guide option is given")
        if name in BASELINES:
            spec, kind = BASELINES[name], "transformers"
        elif name in registered:
            spec, kind = get_method(name), "tokenforge"
        else:
            raise InvalidOptionError(f"unknown method '{name}'; available: "
                                     f"{', '.join([*registered, *BASELINES])} or all")
        if spec.needs_draft and not has_draft:
            raise InvalidOptionError(f"method '{name}' needs a draft model: add "
                                     "--draft-model (e.g. demo-draft)")
        given = method_options.get(name, {})
        added = bench_options(spec, given, replay)
        plans.append(MethodPlan(spec, kind, spec.resolve_options({**given, **added}), added))
    stray = set(method_options) - {p.spec.name for p in plans}
    if stray:
        raise InvalidOptionError(f"--method-option given for {', '.join(sorted(stray))}, which "
                                 "is not benchmarked in this run (see --methods)")
    return plans


def select_prompts(target: LoadedModel, dataset: Dataset, max_new_tokens: int,
                   limit: int | None) -> tuple[list[Selected], Selected, list[str]]:
    """(measured prompts, warm-up prompt, ids of skipped prompts): a prompt is skipped when it
    and `max_new_tokens` do not fit in the model's context."""
    context = target.context_length
    fitting: list[Selected] = []
    skipped: list[str] = []
    for prompt in dataset.prompts:
        try:
            ids = encode(target, prompt)
        except PromptError:
            skipped.append(prompt.id)
            continue
        if context is not None and len(ids) + max_new_tokens > context:
            skipped.append(prompt.id)
            continue
        fitting.append(Selected(prompt, ids))
        if limit is not None and len(fitting) > limit:
            break
    if not fitting:
        raise DatasetError(f"no prompt of {dataset.name} fits the context of {target.name} "
                           f"({context} tokens) with {max_new_tokens} new tokens; lower "
                           "--max-new-tokens")
    measured = fitting[:limit] if limit is not None else fitting
    warmup = fitting[len(measured)] if len(fitting) > len(measured) else measured[0]
    return measured, warmup, skipped


class EngineDecoder:
    """`decode(prompt_ids, seed) -> Decoded` through tokenforge."""

    def __init__(self, target: LoadedModel, draft: LoadedModel | None, method: Method,
                 options: dict, config: BenchConfig):
        self.target, self.draft, self.method = target, draft, method.name
        self.config = config
        self.drafter = make_drafter(target, self.method, draft, **options)  # state carries over
        # this decoder's own guide (its cached states are not shared with the other methods')
        self.guide = make_guide(target, config.guide) if config.guide is not None else None
        self.backend = self.sampler = ""  # as the last generation reported them

    def __call__(self, prompt_ids: list[int], seed: int | None) -> Decoded:
        config = self.config
        gen = generate(self.target, prompt_ids, method=self.method, drafter=self.drafter,
                       draft=self.draft, max_new_tokens=config.max_new_tokens,
                       temperature=config.temperature, seed=seed, backend=config.backend,
                       sampler=config.sampler, guide=self.guide)
        stats = gen.stats
        self.backend, self.sampler = stats.backend, stats.sampler
        timers = {key: getattr(stats, key) for key in TIMERS
                  if key != "draft_hidden_s" or stats.concurrent}
        if stats.guide is not None:
            timers["guide_s"] = stats.guide["guide_s"]
        return Decoded(gen.token_ids, stats.target_forwards, timers, dict(stats.forward_sizes),
                       dict(stats.draft_forward_sizes))

    def calibration(self) -> dict:
        return self.drafter.calibration() if self.drafter is not None else {}


class BaselineDecoder:
    """`decode(prompt_ids, seed) -> Decoded` through transformers' `generate` (an HFDecoder)."""

    backend = "transformers generate()"

    def __init__(self, target: LoadedModel, draft: LoadedModel | None, method: Method,
                 options: dict, config: BenchConfig):
        self.hf = HFDecoder(target, draft, method, options, config.max_new_tokens,
                            config.temperature)
        self.sampler = "greedy" if config.greedy else "transformers sampling"

    def __call__(self, prompt_ids: list[int], seed: int | None) -> Decoded:
        ids, forwards, _ = self.hf(prompt_ids, seed)
        return Decoded(ids, forwards)

    def calibration(self) -> dict:
        return {}


DecodeFn = Callable[[list[int], int | None], Decoded]  # what the timed part calls


def build_decoder(plan: MethodPlan, target: LoadedModel, draft: LoadedModel | None,
                  config: BenchConfig) -> EngineDecoder | BaselineDecoder:
    decoder_class = BaselineDecoder if plan.kind == "transformers" else EngineDecoder
    return decoder_class(target, draft, plan.spec, plan.options, config)


def rotation(n_methods: int, prompt_index: int) -> list[int]:
    """The order the methods run in on prompt `prompt_index`: from method i mod M, wrapping."""
    start = prompt_index % n_methods
    return [*range(start, n_methods), *range(start)]


def interleave(decoders: list[DecodeFn], prompts: list[Selected], config: BenchConfig,
               eos: set[int], device: torch.device, progress: bool = True) -> list[list[PromptResult]]:
    """The timed part: per prompt, `config.repeats` rotations over the methods; returns each
    method's prompt results (the median time, the rest from the first timing)."""
    results: list[list[PromptResult]] = [[] for _ in decoders]
    bar = tqdm(total=len(prompts), desc=f"{len(decoders)} methods, interleaved", unit="prompt",
               file=sys.stderr, disable=not progress, dynamic_ncols=True)
    with bar:
        for i, selected in enumerate(prompts):
            seed = prompt_seed(config, i)
            runs: list[list[tuple[Decoded, float]]] = [[] for _ in decoders]
            for _ in range(config.repeats):
                for m in rotation(len(decoders), i):
                    runs[m].append(timed(device, decoders[m], selected.ids, seed))
            for method_results, method_runs in zip(results, runs):
                method_results.append(prompt_result(selected, method_runs, eos))
            bar.update()
    return results


def prompt_result(selected: Selected, runs: list[tuple[Decoded, float]],
                  eos: set[int]) -> PromptResult:
    first, _ = runs[0]
    return PromptResult(selected.prompt.id, len(selected.ids), count_tokens(first.ids, eos),
                        first.target_forwards, statistics.median(s for _, s in runs),
                        time_split=first.time_split, forward_sizes=first.forward_sizes,
                        draft_forward_sizes=first.draft_forward_sizes)


def memory_pass(decoders: list[DecodeFn], selected: Selected, seed: int | None,
                memory: PeakMemory) -> list[float]:
    """Peak memory per method: reset, then one untimed generation of `selected`, method after
    method."""
    peaks = []
    for decode in decoders:
        memory.reset()
        decode(selected.ids, seed)
        peaks.append(memory.megabytes())
    return peaks


def speedup_over(result: MethodResult, reference: MethodResult, bootstrap: Bootstrap
                 ) -> tuple[float, tuple[float, float] | None]:
    """tokens/s ÷ the reference's, and its bootstrap interval over the prompts."""
    value = result.tokens_per_s / reference.tokens_per_s if reference.tokens_per_s else 0.0
    interval = bootstrap.speedup_interval(
        [p.new_tokens for p in result.prompts], [p.seconds for p in result.prompts],
        [p.new_tokens for p in reference.prompts], [p.seconds for p in reference.prompts])
    return value, interval


def score(results: list[MethodResult], bootstrap: Bootstrap = BOOTSTRAP) -> None:
    """Speedups (tokens/s vs vanilla, and vs hf-greedy when it ran) with their intervals, the
    lossless rate and first divergences (ids vs vanilla's), in place."""
    reference = results[0]  # plan_methods puts vanilla first
    hf = next((r for r in results if r.name == HF_REFERENCE), None)
    for result in results:
        result.speedup, result.speedup_ci95 = speedup_over(result, reference, bootstrap)
        if hf is not None:
            result.speedup_vs_hf_greedy, result.speedup_vs_hf_greedy_ci95 = speedup_over(
                result, hf, bootstrap)
        for ours, ref in zip(result.prompts, reference.prompts, strict=True):
            ours.lossless = same_tokens(ref.token_ids, ours.token_ids)
            ours.first_divergence = first_divergence(ref.token_ids, ours.token_ids)
        result.lossless_rate = lossless_rate([p.token_ids for p in reference.prompts],
                                             [p.token_ids for p in result.prompts])


def model_speedups(results: list[MethodResult], curves: dict[str, MeasuredCurve]) -> None:
    """The modelled speedup of every tokenforge method, in place (baselines keep None)."""
    reference = results[0].forward_sizes
    draft = curves["draft"].curve if "draft" in curves else None
    for result in results:
        if result.plan.kind == "tokenforge":
            result.modelled_speedup = modelled_speedup(
                reference, result.forward_sizes, result.draft_forward_sizes or {},
                curves["target"].curve, draft)


def cost_curves(target: LoadedModel, draft: LoadedModel | None, plans: list[MethodPlan],
                replay: Replay | None, backend: str = "auto") -> dict[str, MeasuredCurve]:
    """The target's curve, and the draft's when a tokenforge method uses the draft model:
    replayed where the calibration file has them, else measured now."""
    roles = {"target": target}
    if any(p.kind == "tokenforge" and p.spec.needs_draft for p in plans):
        roles["draft"] = draft
    recorded = replay.curves if replay is not None else {}
    return {role: recorded.get(role) or measure_curve(model, role, backend)
            for role, model in roles.items()}


def dtype_name(loaded: LoadedModel) -> str:
    return str(loaded.dtype).removeprefix("torch.")


def prompt_seed(config: BenchConfig, index: int) -> int | None:
    """Sampling seed of the prompt at `index` (the same for every method); None when greedy."""
    return None if config.greedy else config.seed + index


def timed_part(decoders: list[DecodeFn], prompts: list[Selected], config: BenchConfig,
               target: LoadedModel, progress: bool) -> tuple[list[list[PromptResult]], MachineLoad]:
    """The interleaved runs, and how busy the machine was meanwhile (warned about on stderr)."""
    before = Snapshot.now()
    results = interleave(decoders, prompts, config, eos_token_ids(target.model, target.tokenizer),
                         target.device, progress)
    load = MachineLoad.between(before, Snapshot.now(), target.device)
    if load.warnings():
        log.warning("tokenforge bench: the machine was busy while timing (%s); ratios from this "
                    "run may be off", "; ".join(load.warnings()))
    return results, load


def run_bench(config: BenchConfig, progress: bool = True, target: LoadedModel | None = None,
              draft: LoadedModel | None = None) -> BenchResult:
    """Run the benchmark; `target`/`draft` may be passed already loaded (tests, notebooks),
    otherwise they are loaded from `config.model` / `config.draft_model`."""
    has_draft = draft is not None or config.draft_model is not None
    replay = load_replay(config.calibration_from) if config.calibration_from else None
    guided = config.guide is not None and not config.guide.empty
    plans = plan_methods(config.methods, config.method_options, has_draft, replay, guided)
    left_out = unguided_left_out(config.methods, has_draft) if guided else []
    if left_out:
        log.warning("tokenforge bench: %s left out: the transformers baselines cannot take a "
                    "guide", ", ".join(left_out))
    dataset = load_dataset(config.dataset, config.category)
    if target is None:
        target = load_model(config.model, device=config.device, dtype=config.dtype)
    if draft is None and config.draft_model is not None:
        draft = load_model(config.draft_model, device=config.device, dtype=config.dtype)
    if guided:
        make_guide(target, config.guide)  # a grammar that does not compile fails before timing
    prompts, warmup, skipped = select_prompts(target, dataset, config.max_new_tokens,
                                              config.limit)
    curves = cost_curves(target, draft, plans, replay, config.backend)
    decoders = [build_decoder(plan, target, draft, config) for plan in plans]
    for decode in decoders:
        for _ in range(config.warmup):
            decode(warmup.ids, prompt_seed(config, 0))
    timed_results, load = timed_part(decoders, prompts, config, target, progress)
    calibrations = [decode.calibration() for decode in decoders]
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i].ids))
    memory = PeakMemory(target.device)
    peaks = memory_pass(decoders, prompts[longest], prompt_seed(config, longest), memory)

    results = [MethodResult(plan, prompt_results, peak, backend=decode.backend,
                            sampler=decode.sampler, dtype=dtype_name(target),
                            draft_dtype=dtype_name(draft) if plan.spec.needs_draft else None,
                            calibration=calibration)
               for plan, prompt_results, peak, decode, calibration
               in zip(plans, timed_results, peaks, decoders, calibrations)]
    score(results)
    model_speedups(results, curves)
    dataset_info = {"name": dataset.name, "source": dataset.source,
                    "sha256": prompts_sha256(s.prompt for s in prompts),
                    "category": config.category, "n_prompts": len(prompts),
                    "skipped_prompts": skipped, "warmup_prompt": warmup.prompt.id,
                    "warmup_in_measured_set": any(warmup is p for p in prompts)}
    memory_prompt = {"id": prompts[longest].prompt.id, "prompt_tokens": len(prompts[longest].ids)}
    return BenchResult(config, environment(target.device, target.dtype), dataset_info,
                       memory.kind, results,
                       datetime.now(timezone.utc).isoformat(timespec="seconds"), load, curves,
                       memory_prompt, replay, left_out)
