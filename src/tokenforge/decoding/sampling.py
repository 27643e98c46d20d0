"""SamplingParams and the one logits -> probabilities path that every decoder and verifier shares."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenforge.errors import InvalidOptionError

GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 (or below 1e-5, where logits / T would overflow) means greedy; top_k 0 and
    top_p 1.0 disable those filters. top-p always keeps the most likely token."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise InvalidOptionError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise InvalidOptionError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise InvalidOptionError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def generator(self) -> torch.Generator:
        """A CPU generator: all sampling draws happen on the CPU, so a seed reproduces anywhere."""
        gen = torch.Generator()
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed)
        return gen

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Float32 probabilities over the last dimension after temperature, top-k and top-p."""
        logits = logits.float()
        if self.greedy:
            return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        logits = logits / self.temperature
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
            drop_sorted = cum - torch.softmax(sorted_logits, dim=-1) >= self.top_p
            drop_sorted[..., 0] = False
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        return torch.softmax(logits, dim=-1)

    def sample(self, logits: torch.Tensor, gen: torch.Generator) -> int:
        """One token from 1-D logits: argmax when greedy, else a draw from `probs`."""
        if self.greedy:
            return int(logits.argmax())
        return sample_from(self.probs(logits.cpu()), gen)


def sample_from(probs: torch.Tensor, gen: torch.Generator) -> int:
    return int(torch.multinomial(probs, 1, generator=gen))
