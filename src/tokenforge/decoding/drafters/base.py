"""The one small interface every drafter fills in (cf. transformers' CandidateGenerator).

Per generation: `set_sampling(sampler)`, then `begin(prompt_ids, target)`; per step:
`propose()` -> one target forward -> `feedback()`; then `finish()`. A drafter whose method
changes how drafting and verification overlap names its `schedule` (see schedules/base.py);
every other drafter runs `Sequential`.
"""

from __future__ import annotations

import torch

from tokenforge.decoding.backends import Backend
from tokenforge.decoding.sampling import Sampler
from tokenforge.decoding.schedules.base import SEQUENTIAL, Schedule
from tokenforge.decoding.tree import TokenTree
from tokenforge.decoding.verify import VerifyResult


class Drafter:
    """`tokens` passed to propose() are all committed tokens (prompt + generated); the last one is
    the tree's implicit root, whose KV the target has not computed yet. `max_depth` is the deepest
    node worth drafting (remaining budget and context); deeper nodes would be cut anyway."""

    name = "drafter"
    schedule: Schedule = SEQUENTIAL
    sampler: Sampler | None = None
    guided = False  # this generation runs under a guide (set by the engine before begin): a
    # guide cuts drafts, so what a drafter measures then is not what it would measure unguided

    def set_sampling(self, sampler: Sampler) -> None:
        """The generation's sampler: its parameters, and its Gumbel noise or random generator.
        Drafters that draw from a draft model draw with it."""
        self.sampler = sampler

    def begin(self, prompt_ids: list[int], target: Backend) -> None:
        """A generation starts; `target` holds the prompt's KV (a drafter may measure forward
        costs on it: it appends and crops back)."""

    def propose(self, tokens: list[int], max_depth: int) -> TokenTree:
        raise NotImplementedError

    def feedback(self, tree: TokenTree, logits: torch.Tensor, result: VerifyResult) -> None:
        """`logits` are the target's at [root] + tree nodes, before the cache kept the path."""

    def finish(self) -> None:
        """The generation ended (also when it was cancelled or stopped early)."""

    def calibration(self) -> dict:
        """What the drafter measured and chose about this machine (recorded by the benchmark)."""
        return {}

    def draft_forward_sizes(self) -> dict[int, int]:
        """Forwards of a draft model in this generation after its prefill, by tokens per
        forward (none here)."""
        return {}
