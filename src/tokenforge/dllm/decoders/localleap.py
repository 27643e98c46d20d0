"""LocalLeap: anchors, and a relaxed threshold in their neighbourhood.

Paper: Kong et al., "Accelerating Diffusion LLM Inference via Local Determinism Propagation"
(LocalLeap), arXiv 2510.07081.

Algorithm: a masked position whose confidence reaches `anchor` is an anchor and is committed;
masked positions within `radius` of an anchor are committed at the lower `relaxed` threshold, on
the observation that confident tokens make their neighbours determined too. With no anchor the
most confident position is committed alone (the loop's rule). Fast-dLLM's caches apply.

Options: block_length=32, anchor=0.9, relaxed=0.75, radius=4, cache=dual (the reference code's
defaults). As there, only masked anchors of the current step count (not tokens committed
earlier), and neighbourhoods do not chain within a step.
Differences: the reference code runs without a KV cache; here Fast-dLLM's caches apply
(`cache=none` for the reference's setting). The neighbourhood stays inside the current block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from tokenforge.decoding.registry import Method, option, require_positive
from tokenforge.dllm.loop import FORWARDERS, BlockView, Rule
from tokenforge.dllm.registry import CacheOptions, Decoder, check_probability, register
from tokenforge.errors import InvalidOptionError


@dataclass(frozen=True)
class LocalLeapOptions(CacheOptions):
    anchor: float = option(0.9, "confidence that makes a masked position an anchor")
    relaxed: float = option(0.75, "threshold for positions within `radius` of an anchor")
    radius: int = option(4, "how far from an anchor the relaxed threshold applies")

    def __post_init__(self):
        super().__post_init__()
        check_probability("localleap", anchor=self.anchor, relaxed=self.relaxed)
        require_positive(radius=self.radius)
        if self.relaxed > self.anchor:
            raise InvalidOptionError(f"localleap: relaxed ({self.relaxed}) must not exceed "
                                     f"anchor ({self.anchor})")


class LocalLeapRule(Rule):
    def __init__(self, opts: LocalLeapOptions):
        self.opts = opts

    def select(self, view: BlockView):
        o = self.opts
        tokens, confidence = view.proposals()
        anchors = view.masked & (confidence >= o.anchor)
        near = F.max_pool1d(anchors.float()[None, None], 2 * o.radius + 1, stride=1,
                            padding=o.radius)[0, 0].bool()
        return tokens, anchors | (near & (confidence >= o.relaxed))


def build(dlm, opts: LocalLeapOptions) -> Decoder:
    return Decoder(LocalLeapRule(opts), FORWARDERS[opts.cache], opts.block_length)


register(Method("localleap", "LocalLeap, Local Determinism Propagation, arXiv 2510.07081",
                "anchors above a high threshold, their neighbours above a relaxed one",
                build=build, options_type=LocalLeapOptions))
