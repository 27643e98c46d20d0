"""DySpec: a draft-model token tree grown greedily at run time.

Paper: Xiong et al., "DySpec: Faster Speculative Decoding with Dynamic Token Tree Structure",
arXiv 2410.11744.

Algorithm: the draft probability of a path (the product of q along it) is a good proxy for its
chance of being accepted, so the tree is grown best-first until it has `budget` nodes. A max-heap
holds, for every expanded node, the value of drawing its next child: cum(node) * max(q_node with
its drawn children removed). Each round pops the best entry `width` times (a node can be popped
again at once), each time drawing one child (greedy: the best remaining token; sampling: a draw
from q_node without replacement) and pushing the node back with its new value; then ONE draft
forward with tree attention over the round's new nodes gives their q, and each is pushed with
value cum(child) * max(q_child). Verification is verify.py's tree rule: greedy, or multi-draft
rejection in which a rejected sibling also leaves q (siblings are drawn without replacement).

Options: budget=16, width=4, max_depth=8, greedy_temperature=0.5 (sized for a CPU, where a
17-token target forward already costs ~1.8x a 1-token one; on a GPU a larger budget pays).
Differences from the paper: the paper expands one node at a time; we add `width` per draft
forward, so a new node's children wait for the next round (the tree deepens by at most one level
per round). A node's children are drafted in the order of `ranking` (draft_model.py): greedy, by
q; gumbel, by q perturbed with the target's noise; rejection, a sample without replacement. The
priority of a draw is known before the token is drawn (cum(parent) times the best remaining q),
so whether a node is drafted never depends on its own token and rejection sampling stays exact.
With greedy decoding the processed q would be one-hot (a chain); priorities use the draft
softmax at `greedy_temperature` instead: at temperature 1 the draft's flat tail fills the first
level (mean accepted 3.07 on the demo pair vs 4.22 at 0.5, 24 nodes).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch

from tokenforge.decoding.drafters.draft_model import TreeDrafter
from tokenforge.decoding.registry import Method, option, register, require_positive
from tokenforge.decoding.tree import TokenTree


@dataclass(frozen=True)
class DySpecOptions:
    budget: int = option(16, "draft tree nodes per step")
    width: int = option(4, "nodes added per draft forward (batched expansion)")
    max_depth: int = option(8, "deepest draft node")
    greedy_temperature: float = option(0.5, "greedy mode: rank candidates by the draft softmax "
                                            "at this temperature")

    def __post_init__(self):
        require_positive(budget=self.budget, width=self.width, max_depth=self.max_depth,
                         greedy_temperature=self.greedy_temperature)


class DySpec(TreeDrafter):
    name = "dyspec"

    def __init__(self, target, draft, options: DySpecOptions = DySpecOptions()):
        super().__init__(target, draft)
        self.budget, self.width, self.max_depth = options.budget, options.width, options.max_depth
        self.greedy_temperature = options.greedy_temperature

    def q(self, logits: torch.Tensor) -> torch.Tensor:
        if self.sampler.kind == "greedy":  # only ranks candidates: greedy verification ignores q
            return torch.softmax(logits / self.greedy_temperature, dim=-1)
        return super().q(logits)

    def propose(self, tokens: list[int], max_depth: int) -> TokenTree:
        limit = self.lm.room(len(tokens), min(self.max_depth, max_depth))
        if limit <= 0:
            return TokenTree()
        logits, q_root = self.start_tree(tokens)
        residual, cum = {-1: q_root.clone()}, {-1: 1.0}
        order = {-1: iter(self.candidates(logits, q_root, self.index_after(-1), self.budget))}
        heap = [(-float(q_root.max()), -1)]
        while heap and len(self.tokens) < self.budget:
            new: list[int] = []
            while heap and len(new) < self.width and len(self.tokens) < self.budget:
                _, parent = heapq.heappop(heap)
                token = next(order[parent], None)
                if token is None:
                    continue
                child = self.add(token, parent)
                cum[child] = cum[parent] * float(self.rows[parent + 1][token])
                rest = residual[parent]
                rest[token] = 0.0
                best = float(rest.max())
                if best > 0:
                    heapq.heappush(heap, (-cum[parent] * best, parent))
                if self.depths[child] < limit:
                    new.append(child)
            if new and len(self.tokens) < self.budget:
                for child, (row, q) in zip(new, self.expand(new)):
                    residual[child] = q.clone()
                    order[child] = iter(self.candidates(row, q, self.index_after(child),
                                                        self.budget))
                    heapq.heappush(heap, (-cum[child] * float(q.max()), child))
        return self.tree()


register(Method(
    "dyspec", "DySpec: dynamic token tree structure (Xiong et al.), arXiv 2410.11744",
    "a draft model grows a token tree best-first by cumulative draft probability",
    build=lambda target, draft, options: DySpec(target, draft, options),
    options_type=DySpecOptions, needs_draft=True,
))
