"""CreditDecoding: trace credits from each position's history of predictions.

Paper: "CreditDecoding: Accelerating Parallel Decoding in Diffusion Large Language Models with
Trace Credits", arXiv 2510.06133.

Algorithm: a masked position often predicts its final token many steps before that token's
confidence crosses the threshold. Each position keeps a credit per token: every step all its
credits decay by `beta`, and the token it currently predicts gains p^`gamma` (its probability to
a power). The credits lift the logits, logit'(v) = logit(v) + `alpha` * log(1 + credit(v)), so a
token that stays the prediction step after step reaches the threshold sooner; commit is
Fast-dLLM's rule on the fused distribution (every mask at or above `threshold`, at least one),
with Fast-dLLM's caches.

Options: block_length=32, threshold=0.9, alpha=0.7, beta=0.8, gamma=0.2, cache=dual (the
defaults of the reference implementation, dInfer's CreditThresholdParallelDecoder).
Differences: none known in the rule; as in dInfer, credits live for the current block only and
only still-masked positions gain credit. The paper's text (credits from "historical logits")
could not be checked against the code, which accumulates the top-1 probability as above.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenforge.decoding.registry import Method, option
from tokenforge.dllm.decoders.fast_dllm import FastDLLMOptions
from tokenforge.dllm.loop import FORWARDERS, BlockView, Rule
from tokenforge.dllm.registry import Decoder, check_probability, register
from tokenforge.errors import InvalidOptionError


@dataclass(frozen=True)
class CreditOptions(FastDLLMOptions):
    alpha: float = option(0.7, "weight of log(1 + credit) added to the logits")
    beta: float = option(0.8, "decay of every credit per step")
    gamma: float = option(0.2, "the predicted token gains its probability to this power")

    def __post_init__(self):
        super().__post_init__()
        check_probability("credit", beta=self.beta, gamma=self.gamma)
        if self.alpha < 0:
            raise InvalidOptionError(f"credit: option 'alpha' must be >= 0, got {self.alpha}")


class CreditRule(Rule):
    def __init__(self, opts: CreditOptions):
        self.opts = opts
        self.credit: torch.Tensor | None = None
        self.block_start = -1

    def begin(self, dlm, canvas, block_length):
        self.credit, self.block_start = None, -1

    def select(self, view: BlockView):
        o = self.opts
        if view.start != self.block_start:  # a new block starts with no credit
            self.credit = torch.zeros_like(view.logits)
            self.block_start = view.start
        tokens, confidence = view.proposals()
        self.credit.mul_(o.beta)
        gain = (confidence ** o.gamma) * view.masked
        self.credit.scatter_add_(1, tokens[:, None], gain[:, None])
        fused = view.logits + o.alpha * torch.log1p(self.credit)
        tokens, confidence = view.proposals(fused)
        return tokens, confidence >= o.threshold


def build(dlm, opts: CreditOptions) -> Decoder:
    return Decoder(CreditRule(opts), FORWARDERS[opts.cache], opts.block_length)


register(Method("credit", "CreditDecoding (trace credits), arXiv 2510.06133",
                "Fast-dLLM's threshold on logits lifted by each position's decayed history of "
                "predictions", build=build, options_type=CreditOptions))
