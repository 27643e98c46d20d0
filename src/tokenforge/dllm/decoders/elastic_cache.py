"""Elastic-Cache: refresh the KV cache when attention drifts, and only from the drifting depth on.

Paper: "Attention Is All You Need for KV Cache in Diffusion LLMs", arXiv 2510.14973.

Algorithm: like Fast-dLLM's dual cache, a block's first step is a full forward whose KV (and,
here, every layer's input hidden states) is kept for all positions; later steps run only the
block. At each later step an attention-drift test watches one probe query: the last committed
token before the block (with the shifted model, the one whose output predicts the block's first
position). Its attention over all keys is compared, layer by layer, with the previous step's by
cosine similarity; at the first layer l where the similarity falls below `gamma`, the cache is
refreshed from l to the top: every position's KV of layers >= l is recomputed from the kept
inputs of layer l (the block's fresh ones), and the step's logits come from that pass. Shallow
layers, which drift least, keep their cache. Commit is Fast-dLLM's threshold rule.

Options: block_length=32, threshold=0.9, gamma=0.9 (the reference's threshold and gamma).
gamma=1 refreshes every layer at every step, which is exactly the uncached forward (a test holds
it to that).
Differences from the reference code (VILA-Lab/Elastic-Cache, LLaDA's generate_with_elastic_cache):
- it decodes a sliding window of the first 16 masks and never queries masks outside it; here the
  fixed blocks of the other decoders are the window, and the block is queried every step;
- its probe is, per layer, the committed token the window's masks attend to most, re-queried each
  step; here one fixed probe, the token just before the block, whose attention row (averaged over
  heads) is compared over the keys;
- it refreshes from the layer after the first drifting one, here from the drifting layer itself;
- it drops the masks after a committed EOS; here the canvas is filled (Learn2PD has that stop).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from tokenforge.decoding.registry import Method, option
from tokenforge.dllm.decoders.fast_dllm import ThresholdRule
from tokenforge.dllm.loop import Forwarder
from tokenforge.dllm.model import KVCache
from tokenforge.dllm.registry import BlockOptions, Decoder, check_probability, register


@dataclass(frozen=True)
class ElasticOptions(BlockOptions):
    threshold: float = option(0.9, "commit every mask whose confidence is at least this")
    gamma: float = option(0.9, "refresh from the first layer whose probe attention has cosine "
                               "similarity below this with the previous step's (1 = always)")

    def __post_init__(self):
        super().__post_init__()
        check_probability("elastic-cache", threshold=self.threshold, gamma=self.gamma)


class ElasticCache(Forwarder):
    def __init__(self, dlm, stats, gamma: float):
        super().__init__(dlm, stats)
        self.gamma = gamma

    def block_logits(self, canvas, start, stop, step):
        dlm = self.dlm
        first = start - 1 if dlm.shift else start
        if step == 0:
            logits, out = self.run(canvas, start, stop, collect=True, layer_inputs=True)
            self.kv, self.inputs, self.previous = out.cache, out.layer_inputs, None
            return logits
        block = torch.arange(first, stop, device=canvas.ids.device)
        logits, out = self.run(canvas, start, stop, self.kv.without(block), probe=0,
                               layer_inputs=True)
        for layer, hidden in enumerate(out.layer_inputs):  # keep the block's fresh inputs
            self.inputs[layer][:, first:stop] = hidden
        layer = self.drifted_layer(out.probe)
        self.previous = out.probe
        if layer is None:
            return logits
        return self.refresh(canvas, layer, first, start, stop)

    def drifted_layer(self, rows: list[torch.Tensor]) -> int | None:
        if self.gamma >= 1.0:
            return 0
        if self.previous is None:
            return None
        for layer, (now, before) in enumerate(zip(rows, self.previous)):
            if torch.cosine_similarity(now, before, dim=0) < self.gamma:
                return layer
        return None

    def refresh(self, canvas, layer: int, first: int, start: int, stop: int) -> torch.Tensor:
        """Recompute layers >= `layer` for every position from the kept inputs of `layer`."""
        dlm, n = self.dlm, canvas.end
        positions = torch.arange(n, device=canvas.ids.device)
        out = dlm.forward(None, positions, collect=True, start_layer=layer,
                          hidden=self.inputs[layer], layer_inputs=True)
        keys = self.kv.keys[:layer] + out.cache.keys
        values = self.kv.values[:layer] + out.cache.values
        self.kv = KVCache(keys, values, positions)
        self.inputs = self.inputs[:layer] + out.layer_inputs
        self.previous = None  # the probe's keys changed: start the comparison afresh
        s = self.stats
        s.target_forwards += 1
        s.tokens_forwarded += round(n * (dlm.num_layers - layer) / dlm.num_layers)
        s.extra["refreshes"] = s.extra.get("refreshes", 0) + 1
        s.extra["refreshed_layers"] = s.extra.get("refreshed_layers", 0) + dlm.num_layers - layer
        return dlm.logits(out.hidden[0, first:first + stop - start])


def build(dlm, opts: ElasticOptions) -> Decoder:
    return Decoder(ThresholdRule(opts.threshold), partial(ElasticCache, gamma=opts.gamma),
                   opts.block_length)


register(Method("elastic-cache", "Elastic-Cache, Attention Is All You Need for KV Cache in "
                "Diffusion LLMs, arXiv 2510.14973",
                "dual cache refreshed from the drifting layer on when the attention drifts",
                build=build, options_type=ElasticOptions))
