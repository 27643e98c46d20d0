"""Runs every method and baseline in one process, on the same prompts, counted the same way.

For each method, in the order given (`vanilla` always first: it is the reference):
1. its decoder is built once: a tokenforge method gets one drafter from `make_drafter`, reused for
   every prompt, so stateful drafters (Token Recycling's matrix, ADED's n-gram table) carry their
   state from the warm-up through all prompts, as in a long-running server; a baseline gets one
   `HFDecoder`;
2. `warmup` untimed generations on the warm-up prompt (the first fitting prompt after the measured
   ones, or the first measured one when the set has no other);
3. each prompt is timed `repeats` times, the median kept. Timing starts from token ids, so
   tokenization is excluded; everything else (drafting, forwards, verification, tokenforge's
   detokenization of the output) is included, the device synchronised on both sides.

Token counting is the same for every method: the new ids the method returned, cut at and including
the first EOS (the engine's EOS set). `lossless` compares those ids with vanilla's, length included.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone

from tqdm import tqdm

from tokenforge.bench.baselines import BASELINES, HFDecoder
from tokenforge.bench.datasets import Dataset, Prompt, encode, load_dataset, prompts_sha256
from tokenforge.bench.system import PeakMemory, environment, timed
from tokenforge.decoding.api import generate, make_drafter
from tokenforge.decoding.engine import eos_token_ids
from tokenforge.decoding.registry import Method, all_methods, get_method
from tokenforge.errors import DatasetError, InvalidOptionError, PromptError
from tokenforge.models.load import LoadedModel, load_model

REFERENCE = "vanilla"
TIMERS = ("draft_s", "verify_s", "other_s", "total_s", "draft_hidden_s")  # kept per prompt


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

    def __post_init__(self) -> None:
        for name, minimum in (("max_new_tokens", 1), ("repeats", 1), ("warmup", 0)):
            if getattr(self, name) < minimum:
                raise InvalidOptionError(f"{name} must be at least {minimum}")
        if self.limit is not None and self.limit < 1:
            raise InvalidOptionError("limit must be at least 1")
        if self.temperature < 0:
            raise InvalidOptionError("temperature must be >= 0 (0 = greedy)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class MethodPlan:
    spec: Method
    kind: str  # "tokenforge" | "transformers"
    options: dict


@dataclass
class PromptResult:
    prompt_id: str
    prompt_tokens: int
    token_ids: list[int]
    target_forwards: int
    seconds: float  # median over the repeats
    lossless: bool | None = None  # token ids == vanilla's, length included
    time_split: dict[str, float] | None = None  # tokenforge methods: GenerationStats' timers

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class MethodResult:
    plan: MethodPlan
    prompts: list[PromptResult]
    peak_memory_mb: float
    speedup: float = 0.0
    lossless_rate: float = 0.0

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
    def time_split(self) -> dict[str, float] | None:
        """Where a tokenforge method's time went, summed over the prompts: draft_s, verify_s,
        other_s, total_s, draft_share (draft ÷ total) and, for a method that drafts concurrently
        (pearl), overlap = draft time hidden ÷ draft time. None for the transformers baselines."""
        splits = [p.time_split for p in self.prompts if p.time_split is not None]
        if not splits:
            return None
        total = {key: sum(split.get(key, 0.0) for split in splits) for key in splits[0]}
        total["draft_share"] = total["draft_s"] / total["total_s"] if total["total_s"] else 0.0
        if "draft_hidden_s" in total:
            total["overlap"] = (total.pop("draft_hidden_s") / total["draft_s"]
                                if total["draft_s"] else 0.0)
        return total


@dataclass
class BenchResult:
    config: BenchConfig
    environment: dict
    dataset: dict
    memory_kind: str
    methods: list[MethodResult]
    created: str


@dataclass
class Selected:
    prompt: Prompt
    ids: list[int]


def same_tokens(reference: list[int], output: list[int]) -> bool:
    """Lossless for one prompt: the same ids in the same order and the same number of them (a
    method that stops early, or runs on, is not lossless even if its ids are a prefix)."""
    return list(output) == list(reference)


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


def plan_methods(names: list[str], method_options: dict[str, dict[str, str]],
                 has_draft: bool) -> list[MethodPlan]:
    """Validate names and options before any model is loaded; `all` = every registered method and
    baseline that can run (the draft-model ones only with a draft model); vanilla goes first."""
    registered = {m.name: m for m in all_methods()}
    expanded: list[str] = [REFERENCE]
    for name in names:
        if name == "all":
            candidates = [*registered.values(), *BASELINES.values()]
            expanded += [m.name for m in candidates if has_draft or not m.needs_draft]
        else:
            expanded.append(name)
    plans = []
    for name in dict.fromkeys(expanded):
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
        plans.append(MethodPlan(spec, kind, spec.resolve_options(method_options.get(name, {}))))
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
    """`decode(prompt_ids, seed) -> (new token ids, target forwards)` through tokenforge."""

    def __init__(self, target: LoadedModel, draft: LoadedModel | None, method: Method,
                 options: dict, max_new_tokens: int, temperature: float):
        self.target, self.draft, self.method = target, draft, method.name
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.drafter = make_drafter(target, self.method, draft, **options)  # state carries over

    def __call__(self, prompt_ids: list[int], seed: int | None
                 ) -> tuple[list[int], int, dict[str, float]]:
        gen = generate(self.target, prompt_ids, method=self.method, drafter=self.drafter,
                       draft=self.draft, max_new_tokens=self.max_new_tokens,
                       temperature=self.temperature, seed=seed)
        stats = gen.stats.as_dict()
        timers = [key for key in TIMERS if key != "draft_hidden_s" or gen.stats.concurrent]
        return gen.token_ids, gen.stats.target_forwards, {key: stats[key] for key in timers}


def run_method(plan: MethodPlan, target: LoadedModel, draft: LoadedModel | None,
               prompts: list[Selected], warmup: Selected, config: BenchConfig,
               memory: PeakMemory, progress: bool = True) -> MethodResult:
    memory.reset()
    decoder_class = HFDecoder if plan.kind == "transformers" else EngineDecoder
    decode = decoder_class(target, draft, plan.spec, plan.options, config.max_new_tokens,
                           config.temperature)
    for _ in range(config.warmup):
        decode(warmup.ids, None if config.greedy else config.seed)
    eos = eos_token_ids(target.model, target.tokenizer)
    results: list[PromptResult] = []
    bar = tqdm(total=len(prompts), desc=f"{plan.spec.name:>16}", unit="prompt", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    with bar:
        for i, selected in enumerate(prompts):
            seed = None if config.greedy else config.seed + i
            runs = [timed(target.device, decode, selected.ids, seed) for _ in range(config.repeats)]
            (ids, forwards, time_split), _ = runs[0]
            results.append(PromptResult(selected.prompt.id, len(selected.ids),
                                        count_tokens(ids, eos), forwards,
                                        statistics.median(seconds for _, seconds in runs),
                                        time_split=time_split))
            done = sum(r.new_tokens for r in results) / sum(r.seconds for r in results)
            bar.set_postfix_str(f"{done:.1f} tok/s")
            bar.update()
    return MethodResult(plan, results, memory.megabytes())


def score(results: list[MethodResult]) -> None:
    """Speedup (tokens/s vs vanilla) and lossless rate (ids vs vanilla's), in place."""
    reference = results[0]  # plan_methods puts vanilla first
    for result in results:
        result.speedup = (result.tokens_per_s / reference.tokens_per_s
                          if reference.tokens_per_s else 0.0)
        for ours, ref in zip(result.prompts, reference.prompts, strict=True):
            ours.lossless = same_tokens(ref.token_ids, ours.token_ids)
        result.lossless_rate = lossless_rate([p.token_ids for p in reference.prompts],
                                             [p.token_ids for p in result.prompts])


def run_bench(config: BenchConfig, progress: bool = True, target: LoadedModel | None = None,
              draft: LoadedModel | None = None) -> BenchResult:
    """Run the benchmark; `target`/`draft` may be passed already loaded (tests, notebooks),
    otherwise they are loaded from `config.model` / `config.draft_model`."""
    has_draft = draft is not None or config.draft_model is not None
    plans = plan_methods(config.methods, config.method_options, has_draft)
    dataset = load_dataset(config.dataset, config.category)
    if target is None:
        target = load_model(config.model, device=config.device, dtype=config.dtype)
    if draft is None and config.draft_model is not None:
        draft = load_model(config.draft_model, device=config.device, dtype=config.dtype)
    prompts, warmup, skipped = select_prompts(target, dataset, config.max_new_tokens,
                                              config.limit)
    memory = PeakMemory(target.device)
    results = [run_method(plan, target, draft, prompts, warmup, config, memory, progress)
               for plan in plans]
    score(results)
    dataset_info = {"name": dataset.name, "source": dataset.source,
                    "sha256": prompts_sha256(s.prompt for s in prompts),
                    "category": config.category, "n_prompts": len(prompts),
                    "skipped_prompts": skipped, "warmup_prompt": warmup.prompt.id,
                    "warmup_in_measured_set": any(warmup is p for p in prompts)}
    return BenchResult(config, environment(target.device, target.dtype), dataset_info,
                       memory.kind, results,
                       datetime.now(timezone.utc).isoformat(timespec="seconds"))
