"""A schedule arranges drafting and verification inside one step of the engine's loop.

The engine owns everything around a step (prefill, stopping, stats, logprobs, the step hook);
a schedule only decides what one step does through the `Session` it is given:

    tree   = session.propose(tokens, room)        # the drafter's tree (timed as drafting)
    logits = session.forward(tokens[-1], tree)    # one target forward over [root] + tree
    result = session.verify(tree, logits, index)  # accepted path + bonus token
    session.keep(prefix, result.path)             # the cache keeps exactly the committed tokens
    session.feedback(tree, logits, result)

`Sequential` does exactly that and is every method's schedule unless its drafter names another
(PEARL drafts the next chain while the target verifies the current one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tokenforge.decoding.engine import Session


@dataclass
class Commit:
    """What one step commits: `tokens`, chosen from rows `rows` of `logits` (the target's logits
    of this step's forward), after `accepted` accepted draft tokens. `dead_end`: the guide allows
    nothing after `tokens` (the generation ends, finish_reason "guide")."""

    tokens: list[int]
    logits: torch.Tensor
    rows: list[int]
    accepted: int
    dead_end: bool = False


class Schedule:
    concurrent = False  # drafts while the target verifies (its stats report the overlap)

    def begin(self, session: Session) -> None:
        """A generation starts (after the prefill and the drafter's begin)."""

    def step(self, session: Session, tokens: list[int], room: int) -> Commit:
        """One step after the committed `tokens`; drafts at most `room` deep."""
        raise NotImplementedError


class Sequential(Schedule):
    def step(self, session: Session, tokens: list[int], room: int) -> Commit:
        tree = session.propose(tokens, room)
        logits = session.forward(tokens[-1], tree)
        result = session.verify(tree, logits, len(tokens))
        session.keep(len(tokens) - 1, result.path)
        session.feedback(tree, logits, result)
        return Commit(result.tokens, logits, result.rows, len(result.path), result.dead_end)


SEQUENTIAL = Sequential()
