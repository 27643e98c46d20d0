"""The one small interface every drafter fills in (cf. transformers' CandidateGenerator)."""

from __future__ import annotations

import torch

from tokenforge.decoding.tree import TokenTree
from tokenforge.decoding.verify import VerifyResult


class Drafter:
    """begin() once per generation, then per step: propose() -> one target forward -> feedback().

    `tokens` passed to propose() are all committed tokens (prompt + generated); the last one is the
    tree's implicit root, whose KV the target has not computed yet. `max_depth` is the deepest
    node worth drafting (remaining budget and context); deeper nodes would be cut anyway.
    """

    name = "drafter"

    def begin(self, prompt_ids: list[int]) -> None:
        pass

    def propose(self, tokens: list[int], max_depth: int) -> TokenTree:
        raise NotImplementedError

    def feedback(self, tree: TokenTree, logits: torch.Tensor, result: VerifyResult) -> None:
        """`logits` are the target's at [root] + tree nodes, before the cache kept the path."""
