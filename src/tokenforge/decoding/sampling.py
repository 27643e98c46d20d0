"""How tokens are chosen: SamplingParams, the one logits -> probabilities path, and the samplers.

Three samplers, one per generation (`make_sampler`):
- greedy (temperature 0): the argmax of the target's logits;
- gumbel (the default for temperature > 0): the token at sequence index i is
  argmax(log p(x) + G_i(x)), where G_i is Gumbel noise drawn from a generator keyed by
  (seed, i) alone. By the Gumbel-max trick that is an exact sample from p, independent across
  positions, so the sequence has exactly the distribution of plain sampling. The choice at every
  tree node is then deterministic given the target's logits, so verification is greedy against
  the perturbed logits: every drafter reproduces vanilla's seeded sample exactly, whatever state
  it carries, in any process. Draft models rank candidates with the same noise (a coupling).
- rejection: the classic speculative sampler (min(1, p/q) acceptance, residual resampling) with
  one CPU generator per generation; kept for comparison (`sampler="rejection"`).

p is the target's distribution after temperature, top-k and top-p (`SamplingParams.probs`), in
float32.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from tokenforge.errors import InvalidOptionError

GREEDY_BELOW = 1e-5
SAMPLERS = ("gumbel", "rejection")
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 (or below 1e-5, where logits / T would overflow) means greedy; top_k 0 and
    top_p 1.0 disable those filters. top-p always keeps the most likely token."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    sampler: str = "gumbel"

    def __post_init__(self):
        if (not _is_number(self.temperature) or not math.isfinite(self.temperature)
                or self.temperature < 0):
            raise InvalidOptionError(f"temperature must be a finite number >= 0 (0 = greedy), "
                                     f"got {self.temperature!r}")
        if not is_integer(self.top_k) or self.top_k < 0:
            raise InvalidOptionError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise InvalidOptionError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if self.seed is not None and not is_integer(self.seed):
            raise InvalidOptionError(f"seed must be an integer or None, got {self.seed!r}")
        if self.sampler not in SAMPLERS:
            raise InvalidOptionError(f"sampler must be one of {', '.join(SAMPLERS)}, "
                                     f"got {self.sampler!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def generator(self) -> torch.Generator:
        """A CPU generator seeded from `seed` (a fresh random seed when None)."""
        gen = torch.Generator()
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed & _MASK64)
        return gen

    def processed(self, logits: torch.Tensor) -> torch.Tensor:
        """Float32 logits / temperature with the tokens top-k and top-p remove set to -inf
        (temperature 1 when greedy)."""
        logits = logits.float()
        if not self.greedy:
            logits = logits / self.temperature
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            drop_sorted = probs.cumsum(-1) - probs >= self.top_p
            drop_sorted[..., 0] = False
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        return logits

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Float32 probabilities over the last dimension after temperature, top-k and top-p
        (one-hot on the argmax when greedy)."""
        if self.greedy:
            logits = logits.float()
            return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        return torch.softmax(self.processed(logits), dim=-1)

    def logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-probabilities reported to users: the processed distribution (temperature, top-k,
        top-p); when greedy, the model's own distribution (temperature 1) after top-k/top-p."""
        return torch.log_softmax(self.processed(logits), dim=-1)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_integer(value) -> bool:
    """An int that is not a bool (True is an int to Python, not to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def sample_from(probs: torch.Tensor, gen: torch.Generator) -> int:
    return int(torch.multinomial(probs, 1, generator=gen))


def mix(seed: int, index: int) -> int:
    """A 64-bit seed for sequence index `index` under `seed` (splitmix64 of both)."""
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class GumbelNoise:
    """G_i for sequence index i: iid standard Gumbel noise over the vocabulary, drawn on the CPU
    from a generator keyed by (seed, i) only, so the same seed gives the same noise everywhere."""

    def __init__(self, seed: int, vocab_size: int, device: torch.device | str = "cpu"):
        self.seed, self.vocab_size, self.device = seed, vocab_size, torch.device(device)
        self._cache: dict[int, torch.Tensor] = {}

    def at(self, index: int) -> torch.Tensor:
        noise = self._cache.get(index)
        if noise is None:
            gen = torch.Generator().manual_seed(mix(self.seed, index))
            u = torch.rand(self.vocab_size, generator=gen, dtype=torch.float64)
            noise = (-torch.log(-torch.log(u.clamp_(min=1e-300)))).float().to(self.device)
            self._cache[index] = noise
        return noise

    def rows(self, indices: list[int]) -> torch.Tensor:
        return torch.stack([self.at(i) for i in indices])

    def forget_before(self, index: int) -> None:
        """Drop the noise of committed positions (it is never needed again)."""
        for i in [i for i in self._cache if i < index]:
            del self._cache[i]


class Sampler:
    """One generation's way of choosing tokens from logits rows.

    `choose(logits, indices)` picks the token of each row, row r choosing the token at sequence
    index indices[r]: the argmax when greedy, the Gumbel-max choice when kind == "gumbel". The
    rejection sampler chooses through `verify.verify_sampling` instead (`deterministic` False).
    """

    def __init__(self, params: SamplingParams, vocab_size: int, device: torch.device | str = "cpu"):
        self.params = params
        if params.greedy:
            self.kind = "greedy"
        else:
            self.kind = params.sampler
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little")
        self.noise = GumbelNoise(seed, vocab_size, device) if self.kind == "gumbel" else None
        self.gen = params.generator() if self.kind == "rejection" else None

    @classmethod
    def greedy(cls, vocab_size: int) -> Sampler:
        return cls(SamplingParams(), vocab_size)

    @property
    def deterministic(self) -> bool:
        """True when a row's choice is a function of its logits (greedy, gumbel)."""
        return self.kind != "rejection"

    def scores(self, logits: torch.Tensor, indices: list[int]) -> torch.Tensor:
        """What `choose` takes the argmax of, row by row (gumbel: processed logits + noise)."""
        if self.kind == "gumbel":
            noise = self.noise.rows(indices).to(logits.device)
            return self.params.processed(logits) + noise
        return logits

    def choose(self, logits: torch.Tensor, indices: list[int]) -> list[int]:
        if self.kind == "rejection":
            return [sample_from(self.params.probs(row.cpu()), self.gen) for row in logits]
        return self.scores(logits, indices).argmax(-1).tolist()

    def forget_before(self, index: int) -> None:
        if self.noise is not None:
            self.noise.forget_before(index)
