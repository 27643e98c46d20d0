"""TokenTree: draft tokens + parent indices -> 4D attention mask, position ids, paths.

The root of every tree is implicit: it is the last committed token, whose KV is not yet in the
cache. Node i has token `tokens[i]` and parent `parents[i]` (-1 = the root); parents come before
their children. A chain is a tree where each node has one child; plain decoding is an empty tree.
Stochastic drafters also attach `draft_probs`: row 0 is the draft distribution q the root's
children were drawn from, row i + 1 the one node i's children were drawn from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

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

    def position_ids(self, prefix_len: int, device) -> torch.Tensor:
        """Positions of [root] + nodes: the root sits at prefix_len, a node at prefix_len + depth."""
        return torch.tensor([[prefix_len] + [prefix_len + d for d in self.depths]], device=device)

    def attention_mask(self, prefix_len: int, device, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(1, 1, 1 + n, prefix_len + 1 + n) mask: every row sees the prefix, the root, its
        ancestors and itself. Bool by default (True = attend), additive float if `dtype` is given."""
        q = len(self) + 1
        ancestors = np.zeros((q, q), dtype=bool)  # row = query node, True = may attend
        ancestors[0, 0] = True
        for i, parent in enumerate(self.parents):
            ancestors[i + 1] = ancestors[parent + 1]
            ancestors[i + 1, i + 1] = True
        mask = np.concatenate([np.ones((q, prefix_len), dtype=bool), ancestors], axis=1)
        mask = torch.from_numpy(mask)[None, None].to(device)
        if dtype is None:
            return mask
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(
            ~mask, torch.finfo(dtype).min)

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

    def truncate(self, max_depth: int) -> TokenTree:
        return self.subtree([i for i, d in enumerate(self.depths) if d <= max_depth])

    def first_chain(self) -> TokenTree:
        """The path that always follows the first child: the fallback for models without tree masks."""
        keep, node = [], -1
        while self.children[node + 1]:
            node = self.children[node + 1][0]
            keep.append(node)
        return self.subtree(keep)

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root's child down to `node` (inclusive)."""
        path = []
        while node >= 0:
            path.append(node)
            node = self.parents[node]
        return path[::-1]
