"""Bootstrap intervals for speedups: how much of a ratio the choice of prompts explains.

A speedup is (Σ tokens ÷ Σ seconds of a method) ÷ (the same of a reference) over the prompts.
`Bootstrap.speedup_interval` resamples the prompts with replacement, the same draw for both
methods (a paired bootstrap: a hard prompt stays hard for both), recomputes that ratio for each
resample, and returns the percentile interval. The draws are seeded, so a report is reproducible.
With a single prompt there is nothing to resample: the interval is undefined (None).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Bootstrap:
    resamples: int = 2000
    confidence: float = 0.95
    seed: int = 0

    def speedup_interval(self, tokens: Sequence[float], seconds: Sequence[float],
                         ref_tokens: Sequence[float], ref_seconds: Sequence[float]
                         ) -> tuple[float, float] | None:
        """The percentile interval of the speedup over the reference, one entry per prompt in
        each sequence (the same prompts, in the same order); None for fewer than two prompts."""
        n = len(tokens)
        if not n == len(seconds) == len(ref_tokens) == len(ref_seconds):
            raise ValueError("every sequence needs one entry per prompt")
        if n < 2:
            return None
        draws = np.random.default_rng(self.seed).integers(0, n, size=(self.resamples, n))

        def rate(values_tokens: Sequence[float], values_seconds: Sequence[float]) -> np.ndarray:
            return (np.asarray(values_tokens, dtype=float)[draws].sum(axis=1)
                    / np.asarray(values_seconds, dtype=float)[draws].sum(axis=1))

        ratios = rate(tokens, seconds) / rate(ref_tokens, ref_seconds)
        tail = 50 * (1 - self.confidence)
        low, high = np.percentile(ratios, [tail, 100 - tail])
        return float(low), float(high)

    def as_dict(self) -> dict:
        return {**asdict(self), "unit": "prompt", "method": "paired percentile bootstrap"}
