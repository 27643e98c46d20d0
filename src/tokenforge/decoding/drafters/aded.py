"""ADED: adaptive draft-verification with a tri-gram table and Monte Carlo tree search.

Paper: Liu et al., "Adaptive Draft-Verification for Efficient Large Language Model Decoding",
arXiv 2407.12021.

Algorithm: a tri-gram table maps each pair of previous tokens to counts of the tokens that
followed it (a bigram table backs it up for unseen pairs). Drafts come from MCTS over the
table: each simulation descends from the root by PUCT, Q + c_puct * P * sqrt(N_parent) /
(1 + N_child), where P is the table's conditional probability of the child, expands one leaf
(its top `branch` continuations) and backs up the leaf's cumulative path probability as the
value. Visited nodes become the draft tree (at most `max_nodes`, the most visited first, parents
always kept). The table is updated online from the prompt and from every token the target
commits, and persists across the drafter's generations (the paper's adaptive update): the
benchmark and the server keep one drafter per method.

Options: depth=4, simulations=48, branch=4, c_puct=1.0, max_nodes=24.
Differences from the paper: the paper initialises the table from a corpus and decays old counts;
we start empty (the prompt seeds it), keep raw counts and add a bigram fallback. Verification
is tokenforge's lossless tree verification, so output never depends on draft quality.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, defaultdict
from dataclasses import dataclass

import torch

from tokenforge.decoding.backends import Backend
from tokenforge.decoding.drafters.base import Drafter
from tokenforge.decoding.registry import Method, option, register, require_positive
from tokenforge.decoding.tree import TokenTree
from tokenforge.decoding.verify import VerifyResult


class NgramTable:
    def __init__(self):
        self.tri: defaultdict[tuple[int, int], Counter] = defaultdict(Counter)
        self.bi: defaultdict[int, Counter] = defaultdict(Counter)

    def observe(self, seq: list[int]) -> None:
        for a, b, c in zip(seq, seq[1:], seq[2:]):
            self.tri[(a, b)][c] += 1
        for b, c in zip(seq, seq[1:]):
            self.bi[b][c] += 1

    def continuations(self, a: int, b: int, n: int) -> list[tuple[int, float]]:
        counts = self.tri.get((a, b)) or self.bi.get(b)
        if not counts:
            return []
        total = sum(counts.values())
        return [(tok, c / total) for tok, c in heapq.nlargest(n, counts.items(), key=lambda x: x[1])]


class _Node:
    __slots__ = ("token", "parent", "prior", "cum", "depth", "visits", "value", "children")

    def __init__(self, token: int, parent: _Node | None, prior: float):
        self.token, self.parent, self.prior = token, parent, prior
        self.cum = prior * (parent.cum if parent else 1.0)
        self.depth = parent.depth + 1 if parent else 0
        self.visits, self.value = 0, 0.0
        self.children: list[_Node] | None = None


@dataclass(frozen=True)
class AdedOptions:
    depth: int = option(4, "maximum draft depth (MCTS horizon)")
    simulations: int = option(48, "MCTS simulations per step")
    branch: int = option(4, "continuations expanded per node")
    c_puct: float = option(1.0, "exploration constant in PUCT")
    max_nodes: int = option(24, "largest draft tree")

    def __post_init__(self):
        require_positive(depth=self.depth, simulations=self.simulations, branch=self.branch,
                         max_nodes=self.max_nodes)


class Aded(Drafter):
    name = "aded"

    def __init__(self, options: AdedOptions = AdedOptions()):
        self.depth, self.simulations, self.branch = options.depth, options.simulations, options.branch
        self.c_puct, self.max_nodes = options.c_puct, options.max_nodes
        self.table = NgramTable()
        self._tail: list[int] = []

    def begin(self, prompt_ids: list[int], target: Backend) -> None:
        self.table.observe(prompt_ids)

    def propose(self, tokens: list[int], max_depth: int) -> TokenTree:
        self._tail = tokens[-2:]
        prev = tokens[-2] if len(tokens) > 1 else -1
        root = _Node(tokens[-1], None, 1.0)
        depth = min(self.depth, max_depth)
        for _ in range(self.simulations):
            node = root
            while node.children:
                node = max(node.children, key=lambda c: self._puct(c))
            if node.depth < depth and node.children is None:
                before = node.parent.token if node.parent else prev
                node.children = [_Node(t, node, p) for t, p in
                                 self.table.continuations(before, node.token, self.branch)]
            value = node.cum
            while node is not None:
                node.visits += 1
                node.value += value
                node = node.parent
        return self._to_tree(root)

    def _puct(self, child: _Node) -> float:
        q = child.value / child.visits if child.visits else 0.0
        return q + self.c_puct * child.prior * math.sqrt(child.parent.visits) / (1 + child.visits)

    def _to_tree(self, root: _Node) -> TokenTree:
        visited, frontier = [], list(root.children or [])
        while frontier:  # breadth first, so parents precede children
            node = frontier.pop(0)
            if node.visits:
                visited.append(node)
                frontier.extend(node.children or [])
        chosen = set(sorted(visited, key=lambda n: -n.visits)[: self.max_nodes])
        index: dict[int, int] = {id(root): -1}
        tokens, parents = [], []
        for node in visited:
            if node in chosen and id(node.parent) in index:
                index[id(node)] = len(tokens)
                tokens.append(node.token)
                parents.append(index[id(node.parent)])
        return TokenTree(tokens, parents)

    def feedback(self, tree: TokenTree, logits: torch.Tensor, result: VerifyResult) -> None:
        self.table.observe(self._tail + result.tokens)


register(Method(
    "aded", "Adaptive Draft-Verification (Liu et al.), arXiv 2407.12021",
    "training-free: MCTS over an online tri-gram table drafts a token tree",
    build=lambda target, draft, options: Aded(options), options_type=AdedOptions,
))
