"""Fast-dLLM: confidence-threshold parallel unmasking and block-wise approximate KV caches.

Paper: Wu et al., "Fast-dLLM: Training-free Acceleration of Diffusion LLM by Enabling KV Cache
and Parallel Decoding", arXiv 2505.22618.

Algorithm: within the current block, every masked position whose confidence (softmax probability
of its proposed token) is at least `threshold` is committed at once; when none is, the single
most confident one is (so a step always makes progress). The caches: `prefix` keeps the KV of
everything before the block from the block's first (full) forward and runs later steps on the
block and its suffix only; `dual` also keeps the masked suffix's KV and runs only the block.
Both are approximate for a bidirectional model (the cached KV was computed when the block was
still masked); the benchmark measures the drift against `cache=none`.

Options: block_length=32, threshold=0.9, cache=dual.
Differences: the paper's factor-based variant (commit the n best while (n + 1)(1 - c_n) < f) is
not implemented; the threshold rule is the one its evaluations use.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenforge.decoding.registry import Method, option
from tokenforge.dllm.loop import FORWARDERS, BlockView, Rule
from tokenforge.dllm.registry import CacheOptions, Decoder, check_probability, register


@dataclass(frozen=True)
class FastDLLMOptions(CacheOptions):
    threshold: float = option(0.9, "commit every mask whose confidence is at least this")

    def __post_init__(self):
        super().__post_init__()
        check_probability("fast-dllm", threshold=self.threshold)


class ThresholdRule(Rule):
    """Commit the masks whose confidence reaches the threshold (the loop adds the best one when
    none does)."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def select(self, view: BlockView):
        tokens, confidence = view.proposals()
        return tokens, confidence >= self.threshold


def build(dlm, opts: FastDLLMOptions) -> Decoder:
    return Decoder(ThresholdRule(opts.threshold), FORWARDERS[opts.cache], opts.block_length)


register(Method("fast-dllm", "Wu et al., Fast-dLLM, arXiv 2505.22618",
                "every mask of the block above a confidence threshold, with prefix/dual KV cache",
                build=build, options_type=FastDLLMOptions))
