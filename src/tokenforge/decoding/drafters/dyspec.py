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
per round). In sampling mode the priority of a draw is known before the token is drawn
(cum(parent) times the best remaining q), so whether a node is drafted never depends on its own
token and verification stays exact. With greedy decoding the processed q would be one-hot (a
chain); we rank by the draft softmax at `greedy_temperature` instead: at temperature 1 the
draft's flat tail fills the first level (mean accepted 3.07 on the demo pair vs 4.22 at 0.5, 24 nodes).
"""

from __future__ import annotations

import heapq

import torch

from tokenforge.decoding.drafters.draft_model import TreeDrafter
from tokenforge.decoding.registry import Method, Option, register, require_positive
from tokenforge.decoding.tree import TokenTree


class DySpec(TreeDrafter):
    name = "dyspec"

    def __init__(self, target, draft, budget: int = 16, width: int = 4, max_depth: int = 8,
                 greedy_temperature: float = 0.5):
        require_positive(budget=budget, width=width, max_depth=max_depth,
                         greedy_temperature=greedy_temperature)
        super().__init__(target, draft)
        self.budget, self.width, self.max_depth = budget, width, max_depth
        self.greedy_temperature = greedy_temperature

    def dist(self, logits: torch.Tensor) -> torch.Tensor:
        if self.sampling.greedy:  # only ranks candidates: verification ignores q when greedy
            return torch.softmax(logits / self.greedy_temperature, dim=-1)
        return super().dist(logits)

    def propose(self, tokens: list[int], max_depth: int) -> TokenTree:
        limit = self.lm.room(len(tokens), min(self.max_depth, max_depth))
        if limit <= 0:
            return TokenTree()
        q_root = self.start_tree(tokens)
        residual, cum, depth = {-1: q_root.clone()}, {-1: 1.0}, {-1: 0}
        heap = [(-float(q_root.max()), -1)]
        while heap and len(self.tokens) < self.budget:
            new: list[int] = []
            while heap and len(new) < self.width and len(self.tokens) < self.budget:
                _, parent = heapq.heappop(heap)
                rest = residual[parent]
                token = self.draw(rest)
                child = self.add(token, parent)
                cum[child] = cum[parent] * float(self.rows[parent + 1][token])
                depth[child] = depth[parent] + 1
                rest[token] = 0.0
                best = float(rest.max())
                if best > 0:
                    heapq.heappush(heap, (-cum[parent] * best, parent))
                if depth[child] < limit:
                    new.append(child)
            if new and len(self.tokens) < self.budget:
                for child, q in zip(new, self.expand(new)):
                    residual[child] = q.clone()
                    heapq.heappush(heap, (-cum[child] * float(q.max()), child))
        return self.tree()


register(Method(
    "dyspec", "DySpec: dynamic token tree structure (Xiong et al.), arXiv 2410.11744",
    "a draft model grows a token tree best-first by cumulative draft probability",
    factory=lambda target, draft, **opts: DySpec(target, draft, **opts),
    options={
        "budget": Option(16, "draft tree nodes per step"),
        "width": Option(4, "nodes added per draft forward (batched expansion)"),
        "max_depth": Option(8, "deepest draft node"),
        "greedy_temperature": Option(0.5, "greedy mode: rank candidates by the draft softmax at "
                                          "this temperature"),
    },
    needs_draft=True,
))
