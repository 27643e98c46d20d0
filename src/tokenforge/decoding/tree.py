"""TokenTree: draft tokens + parent indices -> 4D attention mask, position ids, paths.

The root of every tree is implicit: it is the last committed token, whose KV is not yet in the
cache. Node i has token `tokens[i]` and parent `parents[i]` (-1 = the root); parents come before
their children. A chain is a tree where each node has one child; plain decoding is an empty tree.
Stochastic drafters also attach `draft_probs`: row 0 is the draft distribution q the root's
children were drawn from, row i + 1 the one node i's children were drawn from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np
import torch


@dataclass
class TokenTree:
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    draft_probs: torch.Tensor | None = None
    without_replacement: bool = False  # siblings were drawn without replacement (RSD)

    def __post_init__(self):
        if len(self.tokens) != len(self.parents):
            raise ValueError("a TokenTree needs one parent per token")
        for i, parent in enumerate(self.parents):
            if not -1 <= parent < i:
                raise ValueError(f"node {i} has parent {parent}: parents must precede children")

    @classmethod
    def chain(cls, tokens: list[int], draft_probs: torch.Tensor | None = None) -> TokenTree:
        return cls(list(tokens), list(range(-1, len(tokens) - 1)), draft_probs)

    def __len__(self) -> int:
        return len(self.tokens)

    @cached_property
    def is_chain(self) -> bool:
        return all(parent == i - 1 for i, parent in enumerate(self.parents))

    @cached_property
    def depths(self) -> list[int]:
        depths: list[int] = []
        for parent in self.parents:
            depths.append(1 if parent < 0 else depths[parent] + 1)
        return depths

    @cached_property
    def children(self) -> list[list[int]]:
        """children[0] are the root's children, children[i + 1] node i's (node indices)."""
        kids: list[list[int]] = [[] for _ in range(len(self) + 1)]
        for i, parent in enumerate(self.parents):
            kids[parent + 1].append(i)
        return kids

    def block_mask(self) -> np.ndarray:
        """(1 + n, 1 + n) bool over [root] + nodes: row r may attend to column c (True) when c is
        r itself or one of its ancestors. Cached per tree shape: templates repeat every step."""
        return _ancestors(tuple(self.parents))

    def offsets(self) -> np.ndarray:
        """Position offsets of [root] + nodes from the root: 0 for the root, depth for a node."""
        return np.array([0] + self.depths, dtype=np.int64)

    def subtree(self, keep: list[int]) -> TokenTree:
        """The tree restricted to the ascending node indices `keep` (each one's parent kept too)."""
        if len(keep) == len(self):
            return self
        new_index = {-1: -1}
        for new, old in enumerate(keep):
            new_index[old] = new
        probs = None
        if self.draft_probs is not None:
            probs = self.draft_probs[[0] + [i + 1 for i in keep]]
        return TokenTree([self.tokens[i] for i in keep],
                         [new_index[self.parents[i]] for i in keep], probs,
                         self.without_replacement)

    def under_chain(self, chain: list[int]) -> TokenTree:
        """This tree hung under the last node of `chain`, the chain first from the root. With
        draft rows, the chain's rows are one-hot on its next token (it is accepted for sure)."""
        k = len(chain)
        if not k:
            return self
        probs = self.draft_probs
        if probs is not None:
            rows = torch.zeros(k, probs.shape[-1], dtype=probs.dtype)
            rows[torch.arange(k), torch.tensor(chain)] = 1.0
            probs = torch.cat([rows, probs])
        parents = list(range(-1, k - 1)) + [k - 1 if p < 0 else p + k for p in self.parents]
        return TokenTree(chain + self.tokens, parents, probs, self.without_replacement)

    def truncate(self, max_depth: int) -> TokenTree:
        return self.subtree([i for i, d in enumerate(self.depths) if d <= max_depth])

    def first_chain(self) -> TokenTree:
        """The path that always follows the first child: the fallback for models without tree masks."""
        keep, node = [], -1
        while self.children[node + 1]:
            node = self.children[node + 1][0]
            keep.append(node)
        return self.subtree(keep)

    def map_into(self, other: TokenTree) -> list[int]:
        """For a tree cut from `other` (a subtree, its first chain): each node's index in
        `other`, found by walking `other` by token under the mapped parent."""
        if other is self:
            return list(range(len(self)))
        mapped: list[int] = []
        for token, parent in zip(self.tokens, self.parents):
            under = -1 if parent < 0 else mapped[parent]
            mapped.append(next(c for c in other.children[under + 1] if other.tokens[c] == token))
        return mapped

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root's child down to `node` (inclusive)."""
        path = []
        while node >= 0:
            path.append(node)
            node = self.parents[node]
        return path[::-1]


@lru_cache(maxsize=256)
def _ancestors(parents: tuple[int, ...]) -> np.ndarray:
    """Ancestor-or-self matrix of [root] + nodes, by levels: A <- I | P A, once per depth."""
    q = len(parents) + 1
    parent_of = np.array([0] + [p + 1 for p in parents])  # the root is its own parent
    mask = np.eye(q, dtype=bool)
    reach = np.arange(q)
    while True:
        reach = parent_of[reach]
        if mask[np.arange(q), reach].all():
            break
        mask[np.arange(q), reach] = True
    mask.flags.writeable = False
    return mask
