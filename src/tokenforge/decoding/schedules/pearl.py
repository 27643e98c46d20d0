"""PEARL: the draft model drafts while the target verifies.

Paper: Liu et al., "PEARL: Parallel Speculative Decoding with Adaptive Draft Length",
arXiv 2408.11850.

Algorithm: every round runs ONE target forward and gamma draft steps at the same time.
    target: forward [root] + D (D = the drafts still to verify, possibly none)
    draft:  draft E = gamma tokens after root + D, as if D were all accepted
Then the chain D + [E0] is verified with the target's rows: D by the usual chain rule and E0
against the row after D, which would otherwise only give the bonus token. If everything up to E0
is accepted, E0 is committed without a bonus and E[1:] becomes the next round's D
(post-verify: the draft kept drafting while the target verified). Otherwise the correction token
is committed and the next D is empty, so the next round's target forward checks E0 of a fresh
draft while the draft writes the rest of it (pre-verify). Draft length thus adapts: long runs of
acceptance chain rounds together, and a rejection costs only one short round.
Concurrency: on a CPU the draft runs in a worker thread (torch releases the GIL inside its ops);
on CUDA the target and the draft also get a stream each.

Stats (PearlStats): `draft_s` is the draft's busy time and `draft_hidden_s` the wall time that
running the draft concurrently actually saved: per parallel round, (stand-alone target forward +
stand-alone draft steps) - the round's wall time, capped at the draft's busy time. The stand-alone
costs come from calibration rounds that run their parts one after the other (the first two
rounds, then every 8th). `overlap` = draft_hidden_s / draft_s (in stats.as_dict()). Time the
draft merely shared with the target forward, each slowing the other, does not count as hidden.
`parallel=False` runs every round in turn.

Options: gamma=3 (about the demo pair's target/draft forward-time ratio on a CPU), parallel=True.
Differences from the paper: the paper's two modes are one uniform round here (pre-verify is the
round with empty D); E0 is verified with the row that the target computed for the bonus token,
so no extra forward is needed; gamma is fixed (the paper sets it to the target/draft speed ratio).
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import torch

from tokenforge.decoding import kv
from tokenforge.decoding.drafters.draft_model import SpS
from tokenforge.decoding.engine import GenerationStats, Stopper, eos_token_ids, finish, tree_forward
from tokenforge.decoding.registry import Method, Option, register, require_positive
from tokenforge.decoding.sampling import SamplingParams
from tokenforge.decoding.tree import TokenTree
from tokenforge.decoding.verify import VerifyResult, verify
from tokenforge.models.load import LoadedModel

CALIBRATE_EVERY = 8  # every 8th parallel round runs its parts in turn to measure their costs


@dataclass
class PearlStats(GenerationStats):
    draft_hidden_s: float = 0.0  # wall time saved against running each round's parts in turn

    @property
    def overlap(self) -> float:
        return self.draft_hidden_s / self.draft_s if self.draft_s else 0.0

    def as_dict(self) -> dict:
        return {**super().as_dict(), "overlap": self.overlap}


def verify_round(pending: list[int], pending_q: list[torch.Tensor], drafted: TokenTree,
                 logits: torch.Tensor, sampling: SamplingParams, gen: torch.Generator | None
                 ) -> tuple[VerifyResult, list[int], list[int], list[torch.Tensor]]:
    """Verify D + [E0], E0 against the target's row after D (the bonus row). Returns the result,
    the tokens to commit, and the next D with the q rows its tokens were drawn from."""
    sampled = gen is not None
    if not drafted.tokens:
        probs = torch.stack(pending_q + [torch.zeros(logits.shape[-1])]) if sampled else None
        result = verify(TokenTree.chain(pending, probs), logits, sampling, gen)
        return result, result.tokens, [], []
    probs = None
    if sampled:
        q0 = drafted.draft_probs[0]
        probs = torch.stack(pending_q + [q0, torch.zeros_like(q0)])
    chain = TokenTree.chain(pending + drafted.tokens[:1], probs)
    # E0 has no row of its own: the last row is repeated and the bonus drawn from it is dropped
    result = verify(chain, torch.cat([logits, logits[-1:]]), sampling, gen)
    if len(result.path) < len(chain):
        return result, result.tokens, [], []
    rest_q = list(drafted.draft_probs[1:-1]) if sampled else []
    return result, result.tokens[:-1], drafted.tokens[1:], rest_q


def _timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    start = time.perf_counter()
    out = fn()
    return out, start, time.perf_counter()


def _stream(device: torch.device):
    return torch.cuda.Stream(device) if device.type == "cuda" else None


def _on(stream):
    return torch.cuda.stream(stream) if stream is not None else nullcontext()


class Pearl:
    name = "pearl"

    def __init__(self, target: LoadedModel, draft: LoadedModel, gamma: int = 3,
                 parallel: bool = True):
        require_positive(gamma=gamma)
        self.drafter = SpS(target, draft, gamma=gamma)
        self.gamma, self.parallel = gamma, parallel
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="pearl-draft") if parallel else None
        self.draft_stream = _stream(draft.device)
        self.rounds = 0  # stand-alone costs of recent calibration rounds, kept across generations:
        self.alone_target: deque[float] = deque(maxlen=16)  # one target forward
        self.alone_draft: deque[float] = deque(maxlen=16)  # one draft step

    def _draft(self, tokens: list[int], depth: int) -> TokenTree:
        with _on(self.draft_stream), torch.inference_mode():
            return self.drafter.propose(tokens, depth)

    def _round(self, target: Callable[[], torch.Tensor], draft: Callable[[], TokenTree] | None,
               depth: int, stats: PearlStats) -> tuple[torch.Tensor, TokenTree]:
        """Run the target forward and the draft concurrently, or one after the other when not
        parallel or when this round calibrates the stand-alone costs."""
        if draft is None:
            logits, t0, t1 = _timed(target)
            stats.verify_s += t1 - t0
            return logits, TokenTree()
        calibrate = self.pool is not None and (len(self.alone_target) < 2
                                               or self.rounds % CALIBRATE_EVERY == 0)
        self.rounds += 1
        if self.pool is None or calibrate:
            tree, d0, d1 = _timed(draft)
            logits, t0, t1 = _timed(target)
            if calibrate:
                self.alone_target.append(t1 - t0)
                self.alone_draft.append((d1 - d0) / depth)
        else:
            start = time.perf_counter()  # the round's wall time includes the thread hand-offs
            future = self.pool.submit(_timed, draft)
            logits, t0, t1 = _timed(target)
            tree, d0, d1 = future.result()
            alone = statistics.mean(self.alone_target) + statistics.mean(self.alone_draft) * depth
            saved = alone - (time.perf_counter() - start)
            stats.draft_hidden_s += min(max(0.0, saved), d1 - d0)
        stats.verify_s += t1 - t0
        stats.draft_s += d1 - d0
        return logits, tree

    def generate_ids(self, model, tokenizer, prompt_ids: list[int], sampling: SamplingParams,
                     max_new_tokens: int, context: int | None, stop: list[str] | None = None,
                     on_text: Callable[[str], None] | None = None,
                     should_stop: Callable[[], bool] | None = None,
                     ) -> tuple[list[int], str, PearlStats]:
        """engine.run's contract, PEARL's rounds (`should_stop()` is asked before each round)."""
        start = time.perf_counter()
        device = next(model.parameters()).device
        stats = PearlStats(prompt_tokens=len(prompt_ids))
        gen = None if sampling.greedy else sampling.generator()
        stopper = Stopper(tokenizer, eos_token_ids(model, tokenizer), max_new_tokens, stop or [],
                          on_text)
        limit = context or 1 << 62
        hist: Counter[int] = Counter()
        self.drafter.set_sampling(sampling)
        self.drafter.begin(list(prompt_ids))
        pending: list[int] = []  # D: drafted tokens the target has not verified yet
        pending_q: list[torch.Tensor] = []  # the q each of them was drawn from (sampling only)

        with _on(_stream(device)), torch.inference_mode():
            cache = kv.new_cache(model)
            logits = kv.cached_forward(model, torch.tensor([prompt_ids], device=device), cache)
            stats.target_forwards = 1
            done = stopper.add([sampling.sample(logits[-1], gen)])
            while not done:
                step = stopper.next_step(prompt_ids, limit, should_stop)
                if step is None:
                    break
                tokens, room = step
                prefix_len = len(tokens) - 1
                del pending[room:], pending_q[room:]
                depth = min(self.gamma, room - len(pending))
                logits, drafted = self._round(
                    partial(tree_forward, model, tokens[-1], TokenTree.chain(pending), prefix_len,
                            cache, device),
                    partial(self._draft, tokens + pending, depth) if depth > 0 else None, depth,
                    stats)
                stats.target_forwards += 1

                t = time.perf_counter()
                verified = len(pending)
                result, new, pending, pending_q = verify_round(pending, pending_q, drafted, logits,
                                                               sampling, gen)
                kv.keep(cache, prefix_len, [0] + [i + 1 for i in result.path if i < verified])
                stats.verify_s += time.perf_counter() - t
                hist[len(result.path)] += 1
                done = stopper.add(new)

        return finish(stopper, stats, hist, start)


register(Method(
    "pearl", "PEARL: parallel speculative decoding with adaptive draft length (Liu et al.), "
    "arXiv 2408.11850",
    "the draft model drafts the next chain while the target verifies the current one (threads "
    "on CPU, CUDA streams on GPU)",
    factory=lambda target, draft, **opts: Pearl(target, draft, **opts),
    options={
        "gamma": Option(3, "draft tokens per round (ideally the target/draft forward-time ratio)"),
        "parallel": Option(True, "run draft and target concurrently (False: the same rounds in "
                                 "sequence, to measure what the overlap buys)"),
    },
    needs_draft=True,
))
