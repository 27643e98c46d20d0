"""LLaDA: low-confidence remasking in semi-autoregressive blocks (the reference decoder).

Paper: Nie et al., "Large Language Diffusion Models", arXiv 2502.09992.

Algorithm: the canvas after the prompt starts fully masked and is filled block by block. At each
step one forward over the whole canvas predicts every masked position; within the current
block the `tokens_per_step` most confident predictions are committed (low-confidence remasking:
the others stay masked), or random ones with `remasking=random`. With one token per step it
takes gen_length forwards: the slowest, most careful setting, which the benchmark takes as the
quality reference.

Options: block_length=32, tokens_per_step=1, remasking=low_confidence.
Differences: the paper sets a total step count and spreads each block's tokens evenly over its
steps; a fixed count per step is the same schedule whenever it divides the block length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenforge.decoding.registry import Method, option, require_positive
from tokenforge.dllm.loop import BlockView, FullForward, Rule
from tokenforge.dllm.registry import BlockOptions, Decoder, register


@dataclass(frozen=True)
class LLaDAOptions(BlockOptions):
    tokens_per_step: int = option(1, "positions filled per step (1 = one forward per token)")
    remasking: str = option("low_confidence", "which predictions to keep each step",
                            choices=("low_confidence", "random"))

    def __post_init__(self):
        super().__post_init__()
        require_positive(tokens_per_step=self.tokens_per_step)


class TopKRule(Rule):
    def __init__(self, k: int, random_order: bool, seed: int = 0):
        self.k, self.random_order, self.seed = k, random_order, seed
        self.gen = torch.Generator()

    def begin(self, dlm, canvas, block_length):
        self.gen.manual_seed(self.seed)  # the same random order for the same canvas

    def select(self, view: BlockView):
        tokens, confidence = view.proposals()
        if self.random_order:
            confidence = torch.rand(confidence.shape, generator=self.gen)
        confidence = confidence.masked_fill(~view.masked, -1.0)
        k = min(self.k, int(view.masked.sum()))
        commit = torch.zeros_like(view.masked)
        commit[confidence.topk(k).indices] = True
        return tokens, commit


def build(dlm, opts: LLaDAOptions) -> Decoder:
    return Decoder(TopKRule(opts.tokens_per_step, opts.remasking == "random"), FullForward,
                   opts.block_length)


register(Method("llada", "Nie et al., Large Language Diffusion Models, arXiv 2502.09992",
                "the reference: the k most confident masks of the block per full forward",
                build=build, options_type=LLaDAOptions))
