"""Lossless verification of a TokenTree against the target's logits at [root] + nodes.

Greedy: a child is accepted when it equals the target's argmax at its parent; the longest accepted
path wins and the argmax after its last node is the bonus token.

Sampling (exactly the target's distribution), walking down from the root:
- deterministic drafts (no `draft_probs`, q one-hot): child x is accepted with probability p(x);
  on rejection p(x) <- 0 and p is renormalised before the next sibling is tried;
- stochastic drafts (SpecInfer multi-draft rejection): x is accepted with probability
  min(1, p(x) / q(x)); on rejection p <- norm(max(0, p - q)); when siblings were drawn without
  replacement (RSD), q also drops x and is renormalised;
- when no child is accepted the bonus token is drawn from what is left of p.
p goes through SamplingParams.probs (temperature, top-k, top-p) in float32 on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenforge.decoding.sampling import SamplingParams, sample_from
from tokenforge.decoding.tree import TokenTree


@dataclass
class VerifyResult:
    path: list[int]  # accepted node indices, root's child first
    tokens: list[int]  # accepted tokens followed by the bonus token


def verify(tree: TokenTree, logits: torch.Tensor, sampling: SamplingParams,
           gen: torch.Generator | None = None) -> VerifyResult:
    if sampling.greedy:
        return verify_greedy(tree, logits.argmax(-1).tolist())
    return verify_sampling(tree, logits, sampling, gen)


def verify_greedy(tree: TokenTree, argmax: list[int]) -> VerifyResult:
    def longest(node: int) -> list[int]:
        best: list[int] = []
        want = argmax[node + 1]
        for child in tree.children[node + 1]:
            if tree.tokens[child] == want:
                path = [child] + longest(child)
                if len(path) > len(best):
                    best = path
        return best

    path = longest(-1)
    last = path[-1] if path else -1
    return VerifyResult(path, [tree.tokens[i] for i in path] + [argmax[last + 1]])


def verify_sampling(tree: TokenTree, logits: torch.Tensor, sampling: SamplingParams,
                    gen: torch.Generator) -> VerifyResult:
    path: list[int] = []
    node = -1
    while True:
        p = sampling.probs(logits[node + 1].cpu())
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
                p = torch.clamp(p - q, min=0.0)
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
