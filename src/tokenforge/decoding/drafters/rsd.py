"""RSD: recursive speculative decoding, draft trees whose siblings are drawn without replacement.

Paper: Jeon et al., "Recursive Speculative Decoding: Accelerating LLM Inference via Sampling
Without Replacement", arXiv 2402.14160.

Algorithm: the draft model builds a tree level by level (one batched draft forward with tree
attention per level). Siblings are a sample without replacement from the draft's q at their
parent, so no token is drafted twice under one parent:
- RSD-C (variant=c): a constant branching per depth (`branches`, e.g. 2,2,1); each node's
  children are the Gumbel-top-k of log q (top-k of log q + Gumbel noise), which is an ordered
  sample without replacement.
- RSD-S (variant=s): stochastic beam search (Kool et al. 2019) with `beam` sequences and `depth`
  levels: every beam node's children get Gumbel-perturbed path log-probabilities, conditioned on
  their parent's perturbed value, and the best `beam` of the whole level survive.
Greedy mode replaces the Gumbel draws by the deterministic top-k (RSD-C) or plain beam search
(RSD-S); the gumbel sampler perturbs log q with the target's own noise G_i instead of fresh
draws (its verification is deterministic). With the rejection sampler, verification is
verify.py's recursive rejection sampling: x is accepted with probability min(1, p(x) / q(x)); on
rejection p <- norm(max(0, p - q)) and q drops x and is renormalised.

Options: variant=s, branches=2,2,1 (RSD-C), beam=3 and depth=4 (RSD-S).
Differences from the paper: none in the draft or the verification; the defaults (10-12 nodes)
are sized for the demo pair on a CPU rather than the paper's GPU budgets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenforge.decoding.drafters.draft_model import TreeDrafter, gumbel
from tokenforge.decoding.registry import Method, option, register, require_positive
from tokenforge.decoding.tree import TokenTree
from tokenforge.errors import InvalidOptionError


@dataclass(frozen=True)
class RSDOptions:
    variant: str = option("s", "c = constant branching (Gumbel-top-k), s = stochastic beam search",
                          choices=("c", "s"))
    branches: str = option("2,2,1", "RSD-C: children per node at each depth")
    beam: int = option(3, "RSD-S: beam width (nodes per level)")
    depth: int = option(4, "RSD-S: tree depth")

    @property
    def branching(self) -> list[int]:
        return [int(b) for b in str(self.branches).split(",")]

    def __post_init__(self):
        try:
            branching = self.branching
        except ValueError:
            raise InvalidOptionError(f"rsd: branches must be comma-separated integers, got "
                                     f"{self.branches!r}") from None
        require_positive(beam=self.beam, depth=self.depth,
                         **{f"branches[{i}]": b for i, b in enumerate(branching)})


class RSD(TreeDrafter):
    name = "rsd"

    def __init__(self, target, draft, options: RSDOptions = RSDOptions()):
        super().__init__(target, draft)
        self.branches = options.branching
        self.variant, self.beam, self.depth = options.variant, options.beam, options.depth

    def propose(self, tokens: list[int], max_depth: int) -> TokenTree:
        levels = len(self.branches) if self.variant == "c" else self.depth
        levels = self.lm.room(len(tokens), min(levels, max_depth))
        if levels <= 0:
            return TokenTree()
        root = self.start_tree(tokens)
        if self.variant == "c":
            self._constant_branching(root, levels)
        else:
            self._stochastic_beam(root, levels)
        return self.tree()

    def _constant_branching(self, root: tuple[torch.Tensor, torch.Tensor], levels: int) -> None:
        level, rows = [-1], [root]
        for d in range(levels):
            new = [self.add(token, parent) for parent, (logits, q) in zip(level, rows)
                   for token in self.candidates(logits, q, self.index_after(parent),
                                                self.branches[d])]
            if d + 1 < levels:
                level, rows = new, self.expand(new)

    def _stochastic_beam(self, root: tuple[torch.Tensor, torch.Tensor], levels: int) -> None:
        level, rows = [-1], [root]
        logp = torch.zeros(1, dtype=torch.float64)  # path log-probability of each beam node
        perturbed = torch.zeros(1, dtype=torch.float64)  # its perturbed value (root: 0)
        for d in range(levels):
            logq = torch.stack([q for _, q in rows]).double().log()
            phi = logp[:, None] + logq
            if self.sampler.kind == "rejection":
                g = phi + gumbel(phi.shape, self.gen)
                score = conditional_gumbel(perturbed[:, None], g.max(-1, keepdim=True).values, g)
            elif self.sampler.kind == "gumbel":
                noise = self.sampler.noise.at(self.index_after(level[0])).cpu().double()
                score = perturbed[:, None] + logq + noise
            else:
                score = phi
            k = min(self.beam, int(torch.isfinite(score).sum()))
            best, index = torch.topk(score.flatten(), k)  # descending, so siblings in draw order
            vocab = score.shape[1]
            new = [self.add(i % vocab, level[i // vocab]) for i in index.tolist()]
            if d + 1 < levels:
                level, rows = new, self.expand(new)
                logp, perturbed = phi.flatten()[index], best


def conditional_gumbel(top: torch.Tensor, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Gumbels g with maximum z shifted to have maximum `top` (Kool et al. 2019, appendix B.3):
    -log(exp(-top) - exp(-z) + exp(-g)), computed stably."""
    a = g - z  # <= 0
    log1mexp = torch.where(a > -0.6931, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))
    v = top - g + log1mexp
    return top - torch.relu(v) - torch.log1p(torch.exp(-v.abs()))


register(Method(
    "rsd", "Recursive Speculative Decoding (Jeon et al.), arXiv 2402.14160",
    "a draft model drafts a tree with siblings drawn without replacement (Gumbel-top-k or "
    "stochastic beam search), verified by recursive rejection sampling",
    build=lambda target, draft, options: RSD(target, draft, options), options_type=RSDOptions,
    needs_draft=True,
))
