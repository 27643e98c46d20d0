"""The one decoding loop: prefill, then steps of propose -> one target forward -> verify -> commit.

    prefill(prompt) -> first token (the root of the first tree)
    while not finished:
        tree   = drafter.propose(tokens)          # empty tree = plain decoding
        logits = target([root] + tree)            # ONE forward, tree mask, positions prefix + depth
        result = verify(tree, logits, sampler)    # accepted path + bonus token
        keep(root + path); emit(result.tokens)    # cache = every committed token but the newest
        drafter.feedback(tree, logits, result)

How a step is arranged is the drafter's schedule (schedules/base.py: `Sequential`, or PEARL's
concurrent rounds); everything else lives here once: the backend and its cache, the sampler,
the guide (decoding/guided.py: cuts refused nodes, masks the rows verification reads, forces
tokens), the stopper, stats, logprobs and the step hook. The newest committed token is always the next
tree's root, so plain decoding (no drafter) is one forward per token and scores exactly 1.0 mean
accepted tokens; the prefill counts as a forward. A backend whose attention ignores custom masks
verifies the tree's first chain, which stays lossless.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tokenforge.decoding.backends import Backend
from tokenforge.decoding.drafters.base import Drafter
from tokenforge.decoding.guided import GuideRunner, apply_mask
from tokenforge.decoding.sampling import Sampler, SamplingParams
from tokenforge.decoding.schedules.base import SEQUENTIAL, Schedule
from tokenforge.decoding.stopper import Stopper
from tokenforge.decoding.tree import TokenTree
from tokenforge.decoding.verify import VerifyResult, verify
from tokenforge.guides.base import Guide

TREE_HEADROOM = 128  # cache slots beyond prompt + budget that a tree forward may use


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    target_forwards: int = 0
    acceptance_histogram: dict[int, int] = field(default_factory=dict)  # accepted drafts -> steps
    forward_sizes: dict[int, int] = field(default_factory=dict)  # tokens per forward -> forwards
    draft_forward_sizes: dict[int, int] = field(default_factory=dict)  # the draft's, after its
    # prefill
    prefill_s: float = 0.0  # the prompt's forward and the first token
    draft_s: float = 0.0
    verify_s: float = 0.0  # target forwards over trees, verification, keeping the path
    other_s: float = 0.0  # the rest: the loop itself, stopping, detokenizing
    total_s: float = 0.0
    draft_hidden_s: float = 0.0  # concurrent schedules: wall time the overlap saved
    concurrent: bool = False
    backend: str = ""
    sampler: str = ""
    finish_reason: str = "length"  # length | eos | stop | context | cancelled | guide
    guide: dict | None = None  # guided generations: the guide's counts and guide_s, its time
    # (part of prefill_s, draft_s and verify_s); the acceptance histogram counts the guide's
    # forced tokens as accepted (guide["forced_tokens"] says how many were forced)

    @property
    def mean_accepted_tokens(self) -> float:
        return self.new_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.total_s if self.total_s else 0.0

    @property
    def overlap(self) -> float | None:
        """Concurrent schedules: draft time hidden behind the target's forwards ÷ draft time."""
        if not self.concurrent:
            return None
        return self.draft_hidden_s / self.draft_s if self.draft_s else 0.0

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        out["mean_accepted_tokens"] = self.mean_accepted_tokens
        out["tokens_per_s"] = self.tokens_per_s
        if self.concurrent:
            out["overlap"] = self.overlap
        return out


@dataclass
class TokenLogprob:
    """A token's log-probability under the target (see SamplingParams.logprobs) and the top
    alternatives at its position, most likely first. The prompt's first token has none."""

    token: int
    logprob: float | None
    top: list[tuple[int, float]]


@dataclass
class Generation:
    text: str
    token_ids: list[int]  # new tokens only
    stats: GenerationStats
    method: str
    logprobs: list[TokenLogprob] | None = None  # one per new token, when asked for
    prompt_logprobs: list[TokenLogprob] | None = None  # one per prompt token (echo)


class Session:
    """One generation as a schedule sees it: the target backend, the drafter and the sampler.
    Every draft, target forward and verification goes through here, so stats are kept in one
    place whatever the schedule."""

    def __init__(self, target: Backend, drafter: Drafter | None, sampler: Sampler,
                 stats: GenerationStats, guide: GuideRunner | None = None):
        self.target, self.drafter, self.sampler, self.stats = target, drafter, sampler, stats
        self.guide = guide
        self.forward_sizes: Counter[int] = Counter()
        self.forced: list[int] = []  # the guide's forced tokens that head the last tree
        self.drafted = False  # the drafter proposed the rest of the last tree

    def propose(self, tokens: list[int], max_depth: int) -> TokenTree:
        """The tree to verify after `tokens` (committed, then any drafted ahead): the guide's
        forced tokens as a chain, with the drafter's tree after them less what the guide
        refuses."""
        self.forced, self.drafted = [], False
        if max_depth <= 0 or (self.drafter is None and self.guide is None):
            return TokenTree()
        start = time.perf_counter()
        ahead = tokens[len(tokens) - self.guide.pending(tokens):] if self.guide else []
        forced = self.guide.forced(ahead, max_depth) if self.guide else []
        tree = TokenTree()
        if self.drafter is not None and len(forced) < max_depth:
            tree = self.drafter.propose(tokens + forced, max_depth - len(forced))
            tree = tree.truncate(max_depth - len(forced))
            if not self.target.supports_tree:
                tree = tree.first_chain()
            self.drafted = True
            if self.guide:
                tree = self.guide.prune(tree, ahead + forced)
        if forced:
            self.forced = forced
            if not len(tree) and not self.sampler.deterministic:
                # the rejection sampler's draft rows for a chain alone: no draft after it
                tree = TokenTree(draft_probs=torch.zeros(1, self.target.vocab_size))
            tree = tree.under_chain(forced)
        self.stats.draft_s += time.perf_counter() - start
        return tree

    def forward(self, root: int, tree: TokenTree) -> torch.Tensor:
        """One target forward over [root] + tree, appended after the cached tokens."""
        start = time.perf_counter()
        tokens = [root] + tree.tokens
        if tree.is_chain:  # the causal mask is exactly the chain's mask
            logits = self.target.forward(tokens)
        else:
            logits = self.target.forward(tokens, positions=self.target.length + tree.offsets(),
                                         mask=tree.block_mask())
        self.stats.target_forwards += 1
        self.forward_sizes[len(tokens)] += 1
        self.stats.verify_s += time.perf_counter() - start
        return logits

    def verify(self, tree: TokenTree, logits: torch.Tensor, first_index: int) -> VerifyResult:
        """`first_index`: the sequence index of the token the root's row chooses."""
        start = time.perf_counter()
        masks = self.guide.masks(tree) if self.guide else None
        result = verify(tree, logits, self.sampler, first_index, masks)
        self.stats.verify_s += time.perf_counter() - start
        return result

    def keep(self, prefix_len: int, path: list[int]) -> None:
        """Keep the root and the accepted `path` of the tree forwarded after `prefix_len`."""
        start = time.perf_counter()
        self.target.keep(prefix_len, [0] + [node + 1 for node in path])
        self.stats.verify_s += time.perf_counter() - start

    def feedback(self, tree: TokenTree, logits: torch.Tensor, result: VerifyResult) -> None:
        """The drafter learns from its own tree: after forced tokens, the part of the tree, the
        rows and the result that follow them."""
        if self.drafter is None or not self.drafted:
            return
        k = len(self.forced)
        if k:
            if result.dead_end or len(result.path) < k:
                return
            own = TokenTree(tree.tokens[k:], [p - k for p in tree.parents[k:]],
                            None if tree.draft_probs is None else tree.draft_probs[k:],
                            tree.without_replacement)
            tree, logits = own, logits[k:]
            result = VerifyResult([n - k for n in result.path[k:]], result.tokens[k:])
        start = time.perf_counter()
        self.drafter.feedback(tree, logits, result)
        self.stats.draft_s += time.perf_counter() - start


def eos_token_ids(model, tokenizer) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


def run(target: Backend, tokenizer, prompt_ids: list[int], drafter: Drafter | None,
        sampling: SamplingParams, max_new_tokens: int, context: int | None,
        stop: list[str] | None = None, on_text: Callable[[str], None] | None = None,
        step_hook: Callable[[Backend, list[int]], None] | None = None,
        should_stop: Callable[[], bool] | None = None, logprobs: int | None = None,
        echo: bool = False, method: str = "vanilla", guide: Guide | None = None) -> Generation:
    """Generate from `prompt_ids` (validated by api.generate). `step_hook(backend, committed)`
    runs after every commit that does not finish the generation (the tests check the KV
    invariant with it); `should_stop()` is asked before every step (True ends the generation,
    finish_reason "cancelled"). `logprobs=N` reports each new token's log-probability and the
    top N; `echo` also the prompt's (then max_new_tokens may be 0: the prompt is only scored).
    `guide` constrains the new tokens (guides/base.py); guided, every method gives exactly guided
    plain decoding's ids (greedy) or distribution (sampling)."""
    start = time.perf_counter()
    schedule: Schedule = drafter.schedule if drafter is not None else SEQUENTIAL
    sampler = Sampler(sampling, target.vocab_size, target.device)
    stats = GenerationStats(prompt_tokens=len(prompt_ids), backend=target.describe(),
                            sampler=sampler.kind, concurrent=schedule.concurrent)
    stopper = Stopper(tokenizer, eos_token_ids(target.model, tokenizer), max_new_tokens,
                      stop or [], on_text)
    runner = GuideRunner(guide, target.vocab_size) if guide is not None else None
    session = Session(target, drafter, sampler, stats, runner)
    scorer = Logprobs(sampling, logprobs) if logprobs is not None or echo else None
    hist: Counter[int] = Counter()
    limit = context or 1 << 62
    prompt_scores = None

    with torch.inference_mode():
        target.begin(min(limit, len(prompt_ids) + max_new_tokens) + TREE_HEADROOM)
        logits = target.forward(prompt_ids, last_only=not echo)
        stats.target_forwards = 1
        if echo:
            prompt_scores = scorer.prompt(prompt_ids, logits)
        done = max_new_tokens == 0
        if runner is not None:
            runner.begin(prompt_ids)
            if not done and not apply_mask(logits[-1], runner.root_mask()):
                stopper.reason = "guide"
                done = True
        if not done:
            first = sampler.choose(logits[-1:], [len(prompt_ids)])
            stopper.add(first)
            if runner is not None:
                runner.advance(first)
            if scorer is not None:
                scorer.add(logits[-1:], first)
            done = stopper.finished
        stats.prefill_s = time.perf_counter() - start
        drafting = drafter is not None and not done
        if drafting:
            t = time.perf_counter()
            drafter.set_sampling(sampler)
            drafter.guided = runner is not None
            drafter.begin(list(prompt_ids), target)
            stats.draft_s += time.perf_counter() - t
            schedule.begin(session)
        if step_hook and not done:
            step_hook(target, prompt_ids + stopper.tokens)
        while not done:
            room = stopper.next_step(len(prompt_ids), limit, should_stop)
            if room is None:
                break
            # the step's root mask, which verification reuses
            if runner is not None and _in_verify(stats, runner.dead_end):
                stopper.reason = "guide"
                break
            commit = schedule.step(session, prompt_ids + stopper.tokens, room)
            hist[commit.accepted] += 1
            kept = stopper.add(commit.tokens)
            if runner is not None:
                _in_verify(stats, runner.advance, commit.tokens[:kept])
                if commit.dead_end and not stopper.finished:
                    stopper.reason = "guide"
            if scorer is not None:
                scorer.add(commit.logits[commit.rows[:kept]], commit.tokens[:kept])
            sampler.forget_before(len(prompt_ids) + len(stopper.tokens))
            done = stopper.finished
            if step_hook and not done:
                step_hook(target, prompt_ids + stopper.tokens)

        if drafting:
            t = time.perf_counter()
            drafter.finish()
            stats.draft_s += time.perf_counter() - t
        if runner is not None:
            _in_verify(stats, runner.end)
            stats.guide = runner.stats()

    stopper.close()
    stats.new_tokens = len(stopper.tokens)
    stats.finish_reason = stopper.reason or "length"
    stats.acceptance_histogram = dict(sorted(hist.items()))
    stats.forward_sizes = dict(sorted(session.forward_sizes.items()))
    if drafting:
        stats.draft_forward_sizes = dict(sorted(drafter.draft_forward_sizes().items()))
    stats.total_s = time.perf_counter() - start
    stats.other_s = max(0.0, stats.total_s - stats.prefill_s - stats.draft_s - stats.verify_s)
    return Generation(text=stopper.text(), token_ids=stopper.tokens, stats=stats, method=method,
                      logprobs=scorer.tokens if logprobs is not None else None,
                      prompt_logprobs=prompt_scores)


def _in_verify(stats: GenerationStats, fn: Callable, *args):
    """Run guide work the session does not time, counting it in verify_s."""
    start = time.perf_counter()
    try:
        return fn(*args)
    finally:
        stats.verify_s += time.perf_counter() - start


class Logprobs:
    """Collects TokenLogprob for the committed tokens from the rows that chose them."""

    def __init__(self, sampling: SamplingParams, top: int | None):
        self.sampling, self.top = sampling, top or 0
        self.tokens: list[TokenLogprob] = []

    def score(self, rows: torch.Tensor, tokens: list[int]) -> list[TokenLogprob]:
        logp = self.sampling.logprobs(rows).cpu()
        chosen = logp.gather(1, torch.tensor(tokens)[:, None])[:, 0].tolist()
        out = []
        top_values, top_ids = (torch.topk(logp, min(self.top, logp.shape[-1]), dim=-1)
                               if self.top else (None, None))
        for i, token in enumerate(tokens):
            top = []
            if top_ids is not None:
                top = [(t, v) for t, v in zip(top_ids[i].tolist(), top_values[i].tolist())
                       if v > float("-inf")]
            out.append(TokenLogprob(token, chosen[i], top))
        return out

    def add(self, rows: torch.Tensor, tokens: list[int]) -> None:
        if tokens:
            self.tokens.extend(self.score(rows, tokens))

    def prompt(self, prompt_ids: list[int], logits: torch.Tensor) -> list[TokenLogprob]:
        """Row i of the prefill's logits chose prompt token i + 1; the first token has none."""
        first = TokenLogprob(prompt_ids[0], None, [])
        if len(prompt_ids) == 1:
            return [first]
        return [first] + self.score(logits[:-1], prompt_ids[1:])
