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

It is a schedule of the engine's one loop (schedules/base.py): prefill, stopping, stats,
logprobs and the step hook are the engine's; the drafter is SpS's chain drafter.

Stats: `draft_s` is the draft's busy time and `draft_hidden_s` the wall time that
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
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tokenforge.decoding.drafters.draft_model import SpS, SpSOptions
from tokenforge.decoding.registry import Method, option, register, require_positive
from tokenforge.decoding.schedules.base import Commit, Schedule
from tokenforge.decoding.tree import TokenTree
from tokenforge.decoding.verify import VerifyResult
from tokenforge.models.load import LoadedModel

if TYPE_CHECKING:
    from tokenforge.decoding.engine import Session

CALIBRATE_EVERY = 8  # every 8th parallel round runs its parts in turn to measure their costs


def verify_round(pending: list[int], pending_q: list[torch.Tensor], drafted: TokenTree,
                 logits: torch.Tensor, verify: Callable[[TokenTree, torch.Tensor, int], VerifyResult],
                 first_index: int
                 ) -> tuple[VerifyResult, list[int], list[int], list[torch.Tensor], torch.Tensor]:
    """Verify D + [E0], E0 against the target's row after D (the bonus row), with `verify`
    (Session.verify). Returns the result, the tokens to commit, the next D with the q rows its
    tokens were drawn from, and the logits rows verified (a guide masks them in place)."""
    stochastic = drafted.draft_probs is not None or bool(pending_q)
    if not drafted.tokens:
        probs = torch.stack(pending_q + [torch.zeros(logits.shape[-1])]) if pending_q else None
        result = verify(TokenTree.chain(pending, probs), logits, first_index)
        return result, result.tokens, [], [], logits
    probs = None
    if stochastic:
        q0 = drafted.draft_probs[0]
        probs = torch.stack(pending_q + [q0, torch.zeros_like(q0)])
    chain = TokenTree.chain(pending + drafted.tokens[:1], probs)
    # E0 has no row of its own: the last row is repeated and the bonus chosen from it is dropped
    rows = torch.cat([logits, logits[-1:]])
    result = verify(chain, rows, first_index)
    if result.dead_end or len(result.path) < len(chain):
        return result, result.tokens, [], [], rows
    rest_q = list(drafted.draft_probs[1:-1]) if stochastic else []
    return result, result.tokens[:-1], drafted.tokens[1:], rest_q, rows


def _timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    start = time.perf_counter()
    out = fn()
    return out, start, time.perf_counter()


def _stream(device: torch.device):
    return torch.cuda.Stream(device) if device.type == "cuda" else None


def _on(stream):
    return torch.cuda.stream(stream) if stream is not None else nullcontext()


class PearlSchedule(Schedule):
    concurrent = True

    def __init__(self, gamma: int, parallel: bool, draft_device: torch.device):
        self.gamma, self.parallel = gamma, parallel
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="pearl-draft") if parallel else None
        self.draft_stream = _stream(draft_device)
        self.rounds = 0  # stand-alone costs of recent calibration rounds, kept across generations:
        self.alone_target: deque[float] = deque(maxlen=16)  # one target forward
        self.alone_draft: deque[float] = deque(maxlen=16)  # one draft step

    def begin(self, session: Session) -> None:
        self.pending: list[int] = []  # D: drafted tokens the target has not verified yet
        self.pending_q: list[torch.Tensor] = []  # the q each was drawn from (rejection sampler)

    def step(self, session: Session, tokens: list[int], room: int) -> Commit:
        prefix_len = len(tokens) - 1
        pending = self.pending
        del pending[room:], self.pending_q[room:]
        depth = min(self.gamma, room - len(pending))

        def target() -> torch.Tensor:
            return session.forward(tokens[-1], TokenTree.chain(pending))

        def draft() -> TokenTree:
            with _on(self.draft_stream), torch.inference_mode():
                return session.propose(tokens + pending, depth)

        logits, drafted, hidden = self._round(target, draft if depth > 0 else None, depth)
        session.stats.draft_hidden_s += hidden
        verified = len(pending)
        result, new, self.pending, self.pending_q, rows = verify_round(
            pending, self.pending_q, drafted, logits, session.verify, len(tokens))
        session.keep(prefix_len, [i for i in result.path if i < verified])
        return Commit(new, rows, result.rows[: len(new)], len(result.path), result.dead_end)

    def _round(self, target: Callable[[], torch.Tensor], draft: Callable[[], TokenTree] | None,
               depth: int) -> tuple[torch.Tensor, TokenTree, float]:
        """Run the target forward and the draft concurrently, or one after the other when not
        parallel or when this round calibrates the stand-alone costs. Returns the logits, the
        draft and the wall time the overlap saved."""
        if draft is None:
            return target(), TokenTree(), 0.0
        calibrate = self.pool is not None and (len(self.alone_target) < 2
                                               or self.rounds % CALIBRATE_EVERY == 0)
        self.rounds += 1
        if self.pool is None or calibrate:
            tree, d0, d1 = _timed(draft)
            logits, t0, t1 = _timed(target)
            if calibrate:
                self.alone_target.append(t1 - t0)
                self.alone_draft.append((d1 - d0) / depth)
            return logits, tree, 0.0
        start = time.perf_counter()  # the round's wall time includes the thread hand-offs
        future = self.pool.submit(_timed, draft)
        logits = target()
        tree, d0, d1 = future.result()
        alone = statistics.mean(self.alone_target) + statistics.mean(self.alone_draft) * depth
        saved = alone - (time.perf_counter() - start)
        return logits, tree, min(max(0.0, saved), d1 - d0)


@dataclass(frozen=True)
class PearlOptions:
    gamma: int = option(3, "draft tokens per round (ideally the target/draft forward-time ratio)")
    parallel: bool = option(True, "run draft and target concurrently (False: the same rounds in "
                                  "sequence, to measure what the overlap buys)")

    def __post_init__(self):
        require_positive(gamma=self.gamma)


def pearl(target: LoadedModel, draft: LoadedModel, options: PearlOptions) -> SpS:
    """SpS's chain drafter with PEARL's schedule."""
    drafter = SpS(target, draft, SpSOptions(gamma=options.gamma))
    drafter.name = "pearl"
    drafter.schedule = PearlSchedule(options.gamma, options.parallel, draft.device)
    return drafter


register(Method(
    "pearl", "PEARL: parallel speculative decoding with adaptive draft length (Liu et al.), "
    "arXiv 2408.11850",
    "the draft model drafts the next chain while the target verifies the current one (threads "
    "on CPU, CUDA streams on GPU)",
    build=pearl, options_type=PearlOptions, needs_draft=True,
))
