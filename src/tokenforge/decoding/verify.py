"""Lossless verification of a TokenTree against the target's logits at [root] + nodes.

Deterministic samplers (greedy, gumbel): each row of the target's logits makes one choice (the
argmax, or the Gumbel-max choice for the row's sequence index, see sampling.py). A child is
accepted when it equals its parent's choice; the longest accepted path wins and the choice after
its last node is the bonus token. The output is then exactly the output of plain decoding.

Rejection sampler (exactly the target's distribution), walking down from the root:
- deterministic drafts (no `draft_probs`, q one-hot): child x is accepted with probability p(x);
  on rejection p(x) <- 0 and p is renormalised before the next sibling is tried;
- stochastic drafts (SpecInfer multi-draft rejection): x is accepted with probability
  min(1, p(x) / q(x)); on rejection p <- norm(max(0, p - q)); when siblings were drawn without
  replacement (RSD), q also drops x and is renormalised;
- when no child is accepted the bonus token is drawn from what is left of p. If float32
  rounding leaves nothing of p (q ~ p), the bonus is drawn from p itself.
p goes through SamplingParams.probs (temperature, top-k, top-p) in float32 on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenforge.decoding.sampling import Sampler, sample_from
from tokenforge.decoding.tree import TokenTree


@dataclass
class VerifyResult:
    path: list[int]  # accepted node indices, root's child first
    tokens: list[int]  # accepted tokens followed by the bonus token

    @property
    def rows(self) -> list[int]:
        """The logits row each token of `tokens` was chosen from (0 = the root's row)."""
        return [0] + [node + 1 for node in self.path]


def verify(tree: TokenTree, logits: torch.Tensor, sampler: Sampler, first_index: int
           ) -> VerifyResult:
    """`first_index`: the sequence index of the token the root's row chooses."""
    if sampler.deterministic:
        indices = [first_index] + [first_index + d for d in tree.depths]
        return verify_choices(tree, sampler.choose(logits, indices))
    return verify_sampling(tree, logits, sampler)


def verify_choices(tree: TokenTree, choice: list[int]) -> VerifyResult:
    """Greedy verification against one choice per row ([root] + nodes)."""
    path: list[int] = []
    best: list[int] = []
    stack = [(-1, path)]
    while stack:  # depth-first over accepted nodes; keeps the longest accepted path
        node, so_far = stack.pop()
        if len(so_far) > len(best):
            best = so_far
        want = choice[node + 1]
        for child in tree.children[node + 1]:
            if tree.tokens[child] == want:
                stack.append((child, so_far + [child]))
    last = best[-1] if best else -1
    return VerifyResult(best, [tree.tokens[i] for i in best] + [choice[last + 1]])


def verify_sampling(tree: TokenTree, logits: torch.Tensor, sampler: Sampler) -> VerifyResult:
    params, gen = sampler.params, sampler.gen
    path: list[int] = []
    node = -1
    while True:
        p = params.probs(logits[node + 1].cpu())
        q = None if tree.draft_probs is None else tree.draft_probs[node + 1].float().cpu().clone()
        accepted = None
        for child in tree.children[node + 1]:
            x = tree.tokens[child]
            u = float(torch.rand((), generator=gen))
            if q is None:
                if u < p[x]:
                    accepted = child
                    break
                p[x] = 0.0
            else:
                if q[x] > 0 and u < min(1.0, float(p[x] / q[x])):
                    accepted = child
                    break
                residual = torch.clamp(p - q, min=0.0)
                if residual.sum() > 0:  # float32 rounding can leave nothing when q ~ p
                    p = residual
                if tree.without_replacement:
                    q[x] = 0.0
                    q = _normalise(q)
            p = _normalise(p)
        if accepted is None:
            return VerifyResult(path, [tree.tokens[i] for i in path] + [sample_from(p, gen)])
        path.append(accepted)
        node = accepted


def _normalise(dist: torch.Tensor) -> torch.Tensor:
    total = dist.sum()
    return dist / total if total > 0 else dist
