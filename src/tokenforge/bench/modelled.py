"""Modelled speedup: a method's forwards priced on cost curves measured once per run.

Wall-clock speedups move with whatever else the machine runs; the forwards a method makes do
not. At the start of a run the benchmark times one forward of q tokens (`COST_SIZES`, linear
in between) after a `PREFIX_TOKENS`-token prefix, on the backend the methods use: the target's
curve and, when a tokenforge method uses one, the draft model's. Then, prefills left out:

    modelled speedup = vanilla's forwards priced on cost_t
                       ÷ (Σ_q forward_sizes[q] × cost_t(q) + Σ_q draft_forward_sizes[q] × cost_d(q))

where vanilla's forwards are all of one token. It counts model forwards only, one after
another: drafting outside a forward, verification, Python overhead and any overlap (pearl) are
left out, so it says what the forwards alone allow. A draft model's forwards count with their own
q, each step's catch-up over new committed tokens included; its prefill is left out like the
target's (`GenerationStats.draft_forward_sizes` does not count it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenforge.decoding.backends import get_backend
from tokenforge.decoding.costs import CostCurve, measure_forward_costs
from tokenforge.models.load import LoadedModel

# Powers of two, the size after each, and 96 (1 + the largest tree, token-recycling's 80 nodes,
# fits): on CUDA the static backend pads a forward to the next power of two, so its cost steps
# right after each one; linear interpolation between these sizes follows the steps.
COST_SIZES = (1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 33, 64, 65, 96)
PREFIX_TOKENS = 256
COST_REPEATS = 10  # timings per size (in rounds over the sizes), the median kept


@dataclass
class MeasuredCurve:
    curve: CostCurve
    prefix_tokens: int
    source: str  # "measured" (this run) | "replayed" (from an earlier results.json)

    def as_dict(self) -> dict:
        return {"seconds": self.curve.as_dict(), "prefix_tokens": self.prefix_tokens,
                "source": self.source}

    @classmethod
    def replayed(cls, data: dict) -> MeasuredCurve:
        return cls(CostCurve.from_dict(data["seconds"]), int(data["prefix_tokens"]), "replayed")


def measure_curve(loaded: LoadedModel, role: str, kind: str = "auto") -> MeasuredCurve:
    """Time forwards of each size in COST_SIZES on `loaded`'s backend of `kind` for `role`
    ("target" or "draft"), after a prefix of PREFIX_TOKENS random ids (half the context when that
    is less)."""
    context = loaded.context_length
    prefix = PREFIX_TOKENS if context is None else min(PREFIX_TOKENS, context // 2)
    sizes = [q for q in COST_SIZES if context is None or prefix + q <= context]
    backend = get_backend(loaded, kind, role=role)
    ids = torch.randint(0, backend.vocab_size, (prefix,),
                        generator=torch.Generator().manual_seed(0)).tolist()
    with torch.inference_mode():
        backend.begin(prefix + sizes[-1])
        backend.forward(ids, last_only=True)
        curve = measure_forward_costs(backend, sizes, repeats=COST_REPEATS)
    return MeasuredCurve(curve, prefix, "measured")


def forwards_cost(sizes: dict[int, int], curve: CostCurve) -> float:
    """Seconds of `sizes[q]` forwards of q tokens each, priced on `curve`."""
    return sum(count * curve.cost(q) for q, count in sizes.items())


def modelled_speedup(reference_sizes: dict[int, int], sizes: dict[int, int],
                     draft_sizes: dict[int, int], target: CostCurve,
                     draft: CostCurve | None) -> float | None:
    """The reference's forwards (vanilla's: sizes {1: n}) priced on the target's curve ÷ the
    method's target forwards plus its draft model's forwards, each on its own curve; None when
    the method made no forward after the prefill (every prompt stopped at its first token)."""
    if draft_sizes and draft is None:
        raise ValueError("draft forwards to price but no draft cost curve")
    cost = forwards_cost(sizes, target) + (forwards_cost(draft_sizes, draft) if draft_sizes else 0.0)
    return forwards_cost(reference_sizes, target) / cost if cost else None
