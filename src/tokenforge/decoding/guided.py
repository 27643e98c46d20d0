"""The engine's side of the guide seam (guides/base.py): one `GuideRunner` per guided generation.

The guide's state always stands at the committed tokens. Within a step:
- `forced(extra, limit)`: the tokens the guide forces after the committed ones (+ `extra`,
  tokens a concurrent schedule drafted ahead); when there are some, the step's tree is that chain,
  which needs no acceptance test (the guided distribution at each of them is one token), so each
  forced token saves a target forward;
- `prune(tree, extra)`: the draft tree without the nodes the guide refuses and their subtrees
  (a depth-first walk with consume/rollback, before the target's forward);
- `masks(tree)`: the allowed-token mask of row r of [root] + tree, computed only when
  verification reads that row (the root's and the accepted nodes'), so a guided step asks for
  as many masks as plain guided decoding does for the same tokens;
- `advance(tokens)`: the committed tokens, consumed.
Verification masks each row it reads in place (the logits the step reports, and so its
logprobs, are the guided distribution). A row whose mask allows nothing is a dead end: the
generation ends there with finish_reason "guide".
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from tokenforge.decoding.tree import TokenTree
from tokenforge.guides.base import Guide

RowMask = Callable[[int], "torch.Tensor | None"]


class GuideRunner:
    def __init__(self, guide: Guide, vocab_size: int):
        self.guide, self.vocab_size = guide, vocab_size
        self.seconds = 0.0
        self.committed = 0  # tokens consumed since the prompt
        self._root: tuple[int, torch.Tensor | None] = (-1, None)  # (committed, mask there)
        self.masks_computed = self.pruned_nodes = self.forced_tokens = self.forced_steps = 0

    def _timed(self, fn: Callable, *args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds += time.perf_counter() - start

    def begin(self, prompt_ids: list[int]) -> None:
        self.prompt_len = len(prompt_ids)
        self._timed(self.guide.begin, list(prompt_ids), self.vocab_size)

    def pending(self, tokens: list[int]) -> int:
        """How many of `tokens` (prompt, committed, drafted ahead) are not committed yet."""
        return len(tokens) - self.prompt_len - self.committed

    def _allowed(self) -> torch.Tensor | None:
        self.masks_computed += 1
        return self.guide.allowed()

    def root_mask(self) -> torch.Tensor | None:
        """The mask after the committed tokens, computed once per step (forced(), the dead-end
        check and the root's row share it)."""
        if self._root[0] != self.committed:
            mask = self._timed(self._allowed)
            self._root = (self.committed, None if mask is None else mask.clone())
        return self._root[1]

    def dead_end(self) -> bool:
        """Nothing may follow the committed tokens (checked before a step spends a forward)."""
        mask = self.root_mask()
        return mask is not None and not bool(mask.any())

    def _consume_all(self, tokens: list[int]) -> int:
        done = 0
        for token in tokens:
            if not self.guide.consume(token):
                break
            done += 1
        return done

    def advance(self, tokens: list[int]) -> None:
        """Consume committed tokens (the guide allowed each of them when it was chosen)."""
        taken = self._timed(self._consume_all, tokens)
        if taken != len(tokens):
            raise RuntimeError(f"the guide refused committed token {tokens[taken]} "
                               f"(guide {self.guide.name}): its allowed() and consume() disagree")
        self.committed += taken

    def _ahead(self, extra: list[int], body: Callable[[], object]):
        """Run `body` with the guide stepped over `extra` (tokens it allowed before: drafted
        ahead, or a path of a tree it cut)."""
        taken = self._consume_all(extra)
        try:
            if taken != len(extra):
                raise RuntimeError(f"the guide {self.guide.name} refused token {extra[taken]} it "
                                   "allowed before: its allowed() and consume() disagree")
            return body()
        finally:
            self.guide.rollback(taken)

    def forced(self, extra: list[int], limit: int) -> list[int]:
        if limit <= 0:
            return []
        if not extra:
            mask = self.root_mask()
            if mask is None or int(mask.sum()) != 1:
                return []
        out = self._timed(self._ahead, extra, lambda: self.guide.forced(limit))
        if out:
            self.forced_steps += 1
            self.forced_tokens += len(out)
        return out

    def prune(self, tree: TokenTree, extra: list[int]) -> TokenTree:
        if not len(tree):
            return tree
        keep = sorted(self._timed(self._ahead, extra, lambda: self._valid_nodes(tree)))
        self.pruned_nodes += len(tree) - len(keep)
        return tree.subtree(keep)

    def _valid_nodes(self, tree: TokenTree) -> list[int]:
        keep: list[int] = []
        stack: list[tuple[int, bool]] = [(child, True) for child in reversed(tree.children[0])]
        while stack:  # depth-first; (node, False) marks leaving a node's subtree
            node, entering = stack.pop()
            if not entering:
                self.guide.rollback(1)
                continue
            if not self.guide.consume(tree.tokens[node]):
                continue
            keep.append(node)
            stack.append((node, False))
            stack.extend((child, True) for child in reversed(tree.children[node + 1]))
        return keep

    def masks(self, tree: TokenTree) -> RowMask:
        """Row r of [root] + tree -> the allowed mask at that row (None: every token)."""
        cache: dict[int, torch.Tensor | None] = {}

        def mask(row: int) -> torch.Tensor | None:
            if row == 0:
                return self.root_mask()
            if row not in cache:
                path = [tree.tokens[n] for n in tree.path_to(row - 1)]
                cache[row] = self._timed(self._ahead, path, self._allowed)
            return cache[row]

        return mask

    def stats(self) -> dict:
        return {"name": self.guide.name, "guide_s": self.seconds, "masks": self.masks_computed,
                "pruned_nodes": self.pruned_nodes, "forced_tokens": self.forced_tokens,
                "forced_steps": self.forced_steps, **self.guide.stats()}

    def end(self) -> None:
        self._timed(self.guide.end)


def apply_mask(row: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Mask one logits row in place (disallowed -> -inf); False when nothing is left: the mask
    allows no token, or the model gives every allowed token -inf."""
    if mask is None:
        return True
    row.masked_fill_(~mask.to(row.device), float("-inf"))
    return bool((row > float("-inf")).any())
