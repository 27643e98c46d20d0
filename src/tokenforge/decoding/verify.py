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

Guided (`masks` given, see decoding/guided.py): each row that verification reads is first masked
in place to the tokens the guide allows there, so p is the guided distribution; a stochastic
draft's q is restricted to the same tokens and renormalised: the guide cut the drafts it refuses,
and each sibling left is, given the ones before it, a draw from that restricted q (with or
without replacement alike), so the usual rule stays exact. A row that allows nothing ends the
generation after the tokens accepted so far (`dead_end`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tokenforge.decoding.guided import RowMask, apply_mask
from tokenforge.decoding.sampling import Sampler, sample_from
from tokenforge.decoding.tree import TokenTree


@dataclass
class VerifyResult:
    path: list[int]  # accepted node indices, root's child first
    tokens: list[int]  # accepted tokens followed by the bonus token (none after a dead end)
    dead_end: bool = False  # the guide allowed no token after the accepted ones

    @property
    def rows(self) -> list[int]:
        """The logits row each token of `tokens` was chosen from (0 = the root's row)."""
        return [0] + [node + 1 for node in self.path]


def verify(tree: TokenTree, logits: torch.Tensor, sampler: Sampler, first_index: int,
           masks: RowMask | None = None) -> VerifyResult:
    """`first_index`: the sequence index of the token the root's row chooses; `masks(row)`: the
    guide's allowed tokens at a row (guided decoding)."""
    if not sampler.deterministic:
        return verify_sampling(tree, logits, sampler, masks)
    indices = [first_index] + [first_index + d for d in tree.depths]
    if masks is None:
        return verify_choices(tree, sampler.choose(logits, indices).__getitem__)

    def choose(row: int) -> int | None:
        if not apply_mask(logits[row], masks(row)):
            return None
        return sampler.choose(logits[row:row + 1], [indices[row]])[0]

    return verify_choices(tree, choose)


def verify_choices(tree: TokenTree, choice: Callable[[int], int | None]) -> VerifyResult:
    """Greedy verification against one choice per row ([root] + nodes), asked only for the rows
    of the root and of accepted nodes; None is a dead end (nothing allowed at that row)."""
    best: list[int] = []
    best_choice = choice(0)
    stack: list[tuple[list[int], int | None]] = [([], best_choice)]
    while stack:  # depth-first over accepted nodes; keeps the longest accepted path
        so_far, want = stack.pop()
        if len(so_far) > len(best):
            best, best_choice = so_far, want
        node = so_far[-1] if so_far else -1
        for child in tree.children[node + 1]:
            if want is not None and tree.tokens[child] == want:
                stack.append((so_far + [child], choice(child + 1)))
    accepted = [tree.tokens[i] for i in best]
    if best_choice is None:
        return VerifyResult(best, accepted, dead_end=True)
    return VerifyResult(best, accepted + [best_choice])


def verify_sampling(tree: TokenTree, logits: torch.Tensor, sampler: Sampler,
                    masks: RowMask | None = None) -> VerifyResult:
    params, gen = sampler.params, sampler.gen
    path: list[int] = []
    node = -1
    while True:
        row = logits[node + 1]
        mask = masks(node + 1) if masks is not None else None
        if not apply_mask(row, mask):
            return VerifyResult(path, [tree.tokens[i] for i in path], dead_end=True)
        p = params.probs(row.cpu())
        q = None if tree.draft_probs is None else tree.draft_probs[node + 1].float().cpu().clone()
        if q is not None and mask is not None:
            q = _normalise(q * mask.cpu())
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
