"""The one diffusion decoding loop: a canvas of masks after the prompt, filled block by block.

```
canvas = prompt + [MASK] * gen_length
for each block of block_length positions, left to right:
    while the block has masks:
        logits = forwarder.block_logits(canvas, block)     # full forward, or from a KV cache
        tokens, commit = rule.select(view)                  # which masks to fill, and with what
        canvas[block][commit] = tokens[commit]              # at least one per step
        if rule.finished(canvas): stop                      # e.g. Learn2PD's End-of-Text Prediction
```

A decoder is a `Rule` (which positions to commit: LLaDA's top-k, Fast-dLLM's threshold, ...) and a
`Forwarder` (how the block's logits are computed: `FullForward`, Fast-dLLM's `PrefixCache` and
`DualCache`, Elastic-Cache's own). The output is the canvas after the prompt, cut at the first
EOS. Tokens are the argmax, or with temperature > 0 a Gumbel-max sample (LLaDA's sampler); the
confidence of a token is its softmax probability.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tokenforge.dllm.model import DiffusionLM, KVCache


@dataclass
class DiffusionStats:
    prompt_tokens: int = 0
    gen_length: int = 0  # positions on the canvas (masks at the start)
    new_tokens: int = 0  # the output, cut at the first EOS
    target_forwards: int = 0  # every forward, full or cached
    full_forwards: int = 0  # forwards over the whole canvas (cache refreshes included)
    tokens_forwarded: int = 0  # query tokens summed over forwards: the compute actually spent
    forward_sizes: dict[int, int] = field(default_factory=dict)
    forward_s: float = 0.0
    total_s: float = 0.0
    finish_reason: str = "length"  # length (canvas filled) | eos (stopped at the end of text)
    extra: dict = field(default_factory=dict)  # a decoder's own counts (refreshes, drift, ...)
    backend: str = "dllm"
    guide: None = None

    @property
    def forwards_per_token(self) -> float:
        """Forwards per canvas position: 1.0 for one token per step, lower when parallel."""
        return self.target_forwards / self.gen_length if self.gen_length else 0.0

    @property
    def mean_accepted_tokens(self) -> float:
        return self.gen_length / self.target_forwards if self.target_forwards else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.total_s if self.total_s else 0.0

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "guide"}
        out.update(forwards_per_token=self.forwards_per_token, tokens_per_s=self.tokens_per_s,
                   mean_accepted_tokens=self.mean_accepted_tokens)
        return out


@dataclass
class DiffusionGeneration:
    text: str
    token_ids: list[int]  # new tokens, cut at the first EOS
    canvas: list[int]  # every generated position, EOS and after included
    stats: DiffusionStats
    method: str


@dataclass
class Canvas:
    ids: torch.Tensor  # [prompt_len + gen_length]
    prompt_len: int
    mask_id: int

    @property
    def end(self) -> int:
        return len(self.ids)

    def masked(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self.ids[start:stop] == self.mask_id


@dataclass
class BlockView:
    """What a rule sees at one step: the block's logits and which of its positions are masked."""

    logits: torch.Tensor  # [n, V] float32, for positions start..start + n
    masked: torch.Tensor  # [n] bool
    start: int
    step: int  # steps already taken in this block
    canvas: Canvas
    sampler: Sampler

    def proposals(self, logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each position's token (argmax or Gumbel-max sample) and its softmax probability."""
        return self.sampler.choose(self.logits if logits is None else logits)


class Sampler:
    """Greedy at temperature 0; otherwise Gumbel-max on logits / temperature, seeded."""

    def __init__(self, temperature: float = 0.0, seed: int | None = None):
        self.temperature = temperature
        self.gen = torch.Generator()
        if seed is not None:
            self.gen.manual_seed(seed)

    def choose(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.temperature > 0:
            scaled = logits / self.temperature
            noise = -torch.log(-torch.log(torch.rand(scaled.shape, generator=self.gen)
                                          .clamp_min(1e-20)))
            tokens = (scaled + noise).argmax(-1)
            probs = torch.softmax(scaled, -1)
        else:
            tokens = logits.argmax(-1)
            probs = torch.softmax(logits, -1)
        return tokens, probs.gather(-1, tokens[:, None])[:, 0]


class Rule:
    """Which masked positions of the block to fill at a step. One instance per generation."""

    def begin(self, dlm: DiffusionLM, canvas: Canvas, block_length: int) -> None:
        pass

    def select(self, view: BlockView) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [n], commit [n] bool); the loop commits the most confident mask when none is
        chosen."""
        raise NotImplementedError

    def finished(self, canvas: Canvas) -> bool:
        """True ends the generation at the end of text: the loop fills the remaining masks with
        EOS (Learn2PD's End-of-Text Prediction)."""
        return False


class Forwarder:
    """How a block's logits are computed; `block_logits` is called at every step."""

    def __init__(self, dlm: DiffusionLM, stats: DiffusionStats):
        self.dlm, self.stats = dlm, stats

    def block_logits(self, canvas: Canvas, start: int, stop: int, step: int) -> torch.Tensor:
        raise NotImplementedError

    def run(self, canvas: Canvas, start: int, stop: int, cache: KVCache | None = None,
            until: int | None = None, **forward_kw):
        """`DiffusionLM.predict`, counted."""
        began = time.perf_counter()
        logits, out = self.dlm.predict(canvas.ids, start, stop, cache, until, **forward_kw)
        queries = out.hidden.shape[1]
        self.stats.target_forwards += 1
        self.stats.full_forwards += cache is None
        self.stats.tokens_forwarded += queries
        self.stats.forward_sizes[queries] = self.stats.forward_sizes.get(queries, 0) + 1
        self.stats.forward_s += time.perf_counter() - began
        return logits, out


class FullForward(Forwarder):
    """No cache: every step is a forward over the whole canvas (exact)."""

    def block_logits(self, canvas, start, stop, step):
        return self.run(canvas, start, stop)[0]


class PrefixCache(Forwarder):
    """Fast-dLLM's prefix cache: at a block's first step a full forward also keeps the KV of the
    positions before the block; later steps run only the block and everything after it on that
    cache. Approximate: the prefix's KV was computed when the block was still masked."""

    cache: KVCache | None = None

    def block_logits(self, canvas, start, stop, step):
        first = start - 1 if self.dlm.shift else start
        if step == 0:
            logits, out = self.run(canvas, start, stop, collect=True)
            self.cache = out.cache.select(out.cache.positions < first)
            return logits
        return self.run(canvas, start, stop, self.cache, until=canvas.end)[0]


class DualCache(Forwarder):
    """Fast-dLLM's dual cache: the KV of everything outside the block (prefix and the masked
    suffix) is kept from the block's first step; later steps run only the block's tokens."""

    cache: KVCache | None = None

    def block_logits(self, canvas, start, stop, step):
        first = start - 1 if self.dlm.shift else start
        if step == 0:
            logits, out = self.run(canvas, start, stop, collect=True)
            pos = out.cache.positions
            self.cache = out.cache.select((pos < first) | (pos >= stop))
            return logits
        return self.run(canvas, start, stop, self.cache)[0]


FORWARDERS = {"none": FullForward, "prefix": PrefixCache, "dual": DualCache}


@torch.no_grad()
def run(dlm: DiffusionLM, prompt_ids: list[int], gen_length: int, block_length: int, rule: Rule,
        forwarder: Callable[..., Forwarder], sampler: Sampler, method: str
        ) -> DiffusionGeneration:
    began = time.perf_counter()
    stats = DiffusionStats(prompt_tokens=len(prompt_ids), gen_length=gen_length)
    ids = torch.tensor(list(prompt_ids) + [dlm.mask_id] * gen_length, device=dlm.model.device)
    canvas = Canvas(ids, len(prompt_ids), dlm.mask_id)
    forward = forwarder(dlm, stats)
    rule.begin(dlm, canvas, block_length)
    for start in range(canvas.prompt_len, canvas.end, block_length):
        stop = min(start + block_length, canvas.end)
        step = 0
        masked = canvas.masked(start, stop)
        while masked.any():
            logits = forward.block_logits(canvas, start, stop, step)
            tokens, commit = rule.select(BlockView(logits, masked, start, step, canvas, sampler))
            commit = commit & masked
            if not commit.any():  # every step fills at least one position
                confidence = torch.softmax(logits, -1).amax(-1).masked_fill(~masked, -1.0)
                commit = torch.zeros_like(masked)
                commit[confidence.argmax()] = True
            block = canvas.ids[start:stop]
            block[commit] = tokens[commit].to(block.dtype)
            step += 1
            if rule.finished(canvas):
                stats.finish_reason = "eos"
                canvas.ids[canvas.ids == dlm.mask_id] = dlm.eos_id
            masked = canvas.masked(start, stop)
        if stats.finish_reason == "eos":
            break
    canvas_ids = canvas.ids[canvas.prompt_len:].tolist()
    out = canvas_ids[:canvas_ids.index(dlm.eos_id)] if dlm.eos_id in canvas_ids else canvas_ids
    stats.new_tokens = len(out)
    stats.forward_sizes = dict(sorted(stats.forward_sizes.items()))
    stats.total_s = time.perf_counter() - began
    text = dlm.tokenizer.decode(out)
    return DiffusionGeneration(text, out, canvas_ids, stats, method)
