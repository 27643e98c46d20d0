"""The speculative loop: propose -> one target forward -> verify -> commit -> feedback.

    prefill(prompt) -> first token (the root of the first tree)
    while not finished:
        tree   = drafter.propose(tokens)          # empty tree = plain decoding
        logits = target([root] + tree)            # ONE forward, tree mask, positions prefix + depth
        result = verify(tree, logits, sampling)   # accepted path + bonus token
        kv.keep(root + path); emit(result.tokens)  # cache = every committed token but the newest
        drafter.feedback(tree, logits, result)

The newest committed token is always the next tree's root, so plain decoding (no drafter) is one
forward per token and scores exactly 1.0 mean accepted tokens; the prefill counts as a forward.
Models whose attention ignores custom masks (flash-attention kernels) fall back to the tree's
first chain, which stays lossless.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tokenforge.decoding import kv
from tokenforge.decoding.drafters.base import Drafter
from tokenforge.decoding.sampling import SamplingParams
from tokenforge.decoding.tree import TokenTree
from tokenforge.decoding.verify import verify
from tokenforge.errors import UnsupportedModelError

NO_TREE_MASK = {"flash_attention_2", "flash_attention_3"}


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    target_forwards: int = 0
    acceptance_histogram: dict[int, int] = field(default_factory=dict)  # accepted drafts -> steps
    draft_s: float = 0.0
    verify_s: float = 0.0
    other_s: float = 0.0
    total_s: float = 0.0
    finish_reason: str = "length"  # length | eos | stop | context | cancelled

    @property
    def mean_accepted_tokens(self) -> float:
        return self.new_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.total_s if self.total_s else 0.0

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items()}
        out["mean_accepted_tokens"] = self.mean_accepted_tokens
        out["tokens_per_s"] = self.tokens_per_s
        return out


class Stopper:
    """Tracks EOS, stop strings and the token budget; decodes text only when it is needed."""

    def __init__(self, tokenizer, eos_ids: set[int], max_new_tokens: int, stop: list[str],
                 on_text: Callable[[str], None] | None):
        self.tokenizer, self.eos_ids, self.budget = tokenizer, eos_ids, max_new_tokens
        self.stop, self.on_text = stop, on_text
        self.tokens: list[int] = []
        self.text = ""
        self.sent = 0
        self.reason: str | None = None

    def add(self, new: list[int]) -> bool:
        """Append tokens one by one until a stop condition; returns True when finished."""
        for token in new:
            self.tokens.append(token)
            if token in self.eos_ids:
                self.reason = "eos"
            elif len(self.tokens) >= self.budget:
                self.reason = "length"
            if self.reason:
                break
        if self.stop or self.on_text:
            self._update_text()
        return self.reason is not None

    def next_step(self, prompt_ids: list[int], limit: int,
                  should_stop: Callable[[], bool] | None) -> tuple[list[int], int] | None:
        """Before a step: (committed tokens, deepest draft node worth verifying), or None when
        the generation must end first (cancelled, or the context is full)."""
        if should_stop and should_stop():
            self.reason = "cancelled"
            return None
        tokens = prompt_ids + self.tokens
        if len(tokens) >= limit:
            self.reason = "context"
            return None
        return tokens, min(self.budget - len(self.tokens), limit - len(tokens)) - 1

    def _update_text(self) -> None:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if self.stop:
            search_from = max(0, len(self.text) - max(map(len, self.stop)))
            hits = [i for i in (text.find(s, search_from) for s in self.stop) if i >= 0]
            if hits:
                text, self.reason = text[: min(hits)], "stop"
        self.text = text
        if self.on_text:
            ready = len(text) if self.reason else len(text.rstrip("\ufffd"))
            if self.stop and not self.reason:  # hold back what could still become a stop string
                ready = min(ready, max(0, len(text) - max(map(len, self.stop)) + 1))
            ready = max(ready, self.sent)
            if ready > self.sent:
                self.on_text(text[self.sent : ready])
                self.sent = ready


def eos_token_ids(model, tokenizer) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


def run(model, tokenizer, prompt_ids: list[int], drafter: Drafter | None,
        sampling: SamplingParams, max_new_tokens: int, context: int | None,
        stop: list[str] | None = None, on_text: Callable[[str], None] | None = None,
        step_hook: Callable[[object, list[int]], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        ) -> tuple[list[int], str, GenerationStats]:
    """Generate from `prompt_ids`; returns (new token ids, text, stats). Inputs are validated by
    the caller (api.generate). `step_hook(cache, committed_tokens)` runs after every commit that
    does not finish the generation (the tests check the KV invariant with it). `should_stop()` is
    asked before every step; True ends the generation with finish_reason "cancelled"."""
    start = time.perf_counter()
    device = next(model.parameters()).device
    stats = GenerationStats(prompt_tokens=len(prompt_ids))
    gen = None if sampling.greedy else sampling.generator()
    tree_mask = getattr(model.config, "_attn_implementation", None) not in NO_TREE_MASK
    stopper = Stopper(tokenizer, eos_token_ids(model, tokenizer), max_new_tokens, stop or [],
                      on_text)
    hist: Counter[int] = Counter()
    limit = context or 1 << 62

    with torch.inference_mode():
        cache = kv.new_cache(model)
        logits = kv.cached_forward(model, torch.tensor([prompt_ids], device=device), cache)
        stats.target_forwards = 1
        done = stopper.add([sampling.sample(logits[-1], gen) if gen else int(logits[-1].argmax())])
        if step_hook and not done:
            step_hook(cache, prompt_ids + stopper.tokens)
        if drafter is not None:
            t = time.perf_counter()
            if hasattr(drafter, "set_sampling"):  # stochastic drafters sample with the same params
                drafter.set_sampling(sampling)
            drafter.begin(list(prompt_ids))
            stats.draft_s += time.perf_counter() - t
        while not done:
            step = stopper.next_step(prompt_ids, limit, should_stop)
            if step is None:
                break
            tokens, max_depth = step
            prefix_len = len(tokens) - 1
            tree = TokenTree()
            if drafter is not None and max_depth > 0:
                t = time.perf_counter()
                tree = drafter.propose(tokens, max_depth).truncate(max_depth)
                if not tree_mask:
                    tree = tree.first_chain()
                stats.draft_s += time.perf_counter() - t

            t = time.perf_counter()
            logits = tree_forward(model, tokens[-1], tree, prefix_len, cache, device)
            stats.target_forwards += 1
            result = verify(tree, logits, sampling, gen)
            kv.keep(cache, prefix_len, [0] + [i + 1 for i in result.path])
            stats.verify_s += time.perf_counter() - t
            hist[len(result.path)] += 1

            if drafter is not None:
                t = time.perf_counter()
                drafter.feedback(tree, logits, result)
                stats.draft_s += time.perf_counter() - t
            done = stopper.add(result.tokens)
            if step_hook and not done:
                step_hook(cache, prompt_ids + stopper.tokens)

    return finish(stopper, stats, hist, start)


def finish(stopper: Stopper, stats: GenerationStats, hist: Counter, start: float,
           ) -> tuple[list[int], str, GenerationStats]:
    """Close a generation's stats and text (shared by every loop: the engine and schedules)."""
    text = stopper.text if (stopper.stop or stopper.on_text) else stopper.tokenizer.decode(
        stopper.tokens, skip_special_tokens=True)
    stats.new_tokens = len(stopper.tokens)
    stats.finish_reason = stopper.reason or "length"
    stats.acceptance_histogram = dict(sorted(hist.items()))
    stats.total_s = time.perf_counter() - start
    stats.other_s = max(0.0, stats.total_s - stats.draft_s - stats.verify_s)
    return stopper.tokens, text, stats


def tree_forward(model, root: int, tree: TokenTree, prefix_len: int, cache, device):
    input_ids = torch.tensor([[root] + tree.tokens], device=device)
    if tree.is_chain:  # the model's own causal mask is exactly the chain's mask
        return kv.cached_forward(model, input_ids, cache)
    try:
        return kv.cached_forward(model, input_ids, cache,
                                 position_ids=tree.position_ids(prefix_len, device),
                                 attention_mask=tree.attention_mask(prefix_len, device))
    except (RuntimeError, ValueError, TypeError) as err:
        raise UnsupportedModelError(
            f"{type(model).__name__} could not run a token tree with a custom 4D attention mask "
            f"({str(err).splitlines()[0]}); use a chain method such as pld or sps") from None
