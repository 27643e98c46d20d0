"""Forward-cost curves and the per-machine calibration store.

`measure_forward_costs(backend, sizes)` times one cached forward of q tokens for each q, on the
backend as it stands (appending after its cached tokens and cropping back, so a generation in
progress is untouched). `CostCurve.cost(q)` interpolates between the measured sizes.

`CalibrationStore` keeps what was measured per (model, device, dtype, backend) in a JSON file
under the user cache directory (`$TOKENFORGE_CACHE_DIR`, else `$XDG_CACHE_HOME/tokenforge`,
else `~/.cache/tokenforge`; `TOKENFORGE_CACHE_DIR=off` disables it), so that a new process does
not measure again: Token Recycling's cost curve and chosen tree size live there.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tokenforge.decoding.backends import Backend
from tokenforge.models.load import device_name


@dataclass
class CostCurve:
    seconds: dict[int, float]  # tokens per forward -> median seconds

    def cost(self, q: int) -> float:
        """Seconds of a forward of q tokens, linear between (and beyond) the measured sizes."""
        sizes = sorted(self.seconds)
        if q in self.seconds:
            return self.seconds[q]
        if len(sizes) == 1:
            return self.seconds[sizes[0]]
        below = [s for s in sizes if s < q]
        above = [s for s in sizes if s > q]
        lo, hi = (below[-1], above[0]) if below and above else (
            (sizes[0], sizes[1]) if not below else (sizes[-2], sizes[-1]))
        slope = (self.seconds[hi] - self.seconds[lo]) / (hi - lo)
        return max(0.0, self.seconds[lo] + slope * (q - lo))

    def as_dict(self) -> dict[str, float]:
        return {str(q): s for q, s in sorted(self.seconds.items())}

    @classmethod
    def from_dict(cls, data: dict) -> CostCurve:
        return cls({int(q): float(s) for q, s in data.items()})


def measure_forward_costs(backend: Backend, sizes: list[int], masks: dict | None = None,
                          repeats: int = 5) -> CostCurve:
    """Median seconds of a forward of q tokens after the backend's cached tokens, for each q in
    `sizes` (`masks[q]`: a (q, q) tree block mask to use instead of the causal one). The sizes
    are timed in rounds (each round times every size once), so that a passing slowdown of the
    machine lands on all sizes alike rather than bending the curve; the first round warms up."""
    masks = masks or {}
    gen = torch.Generator().manual_seed(0)
    base = backend.length
    work = {}
    for q in sizes:
        mask = masks.get(q)
        work[q] = (torch.randint(0, backend.vocab_size, (q,), generator=gen).tolist(), mask,
                   None if mask is None else base + _depths(mask))
    times: dict[int, list[float]] = {q: [] for q in sizes}
    with torch.inference_mode():
        for _ in range(repeats + 1):
            for q, (tokens, mask, positions) in work.items():
                _synchronize(backend.device)
                start = time.perf_counter()
                backend.forward(tokens, positions=positions, mask=mask)
                _synchronize(backend.device)
                times[q].append(time.perf_counter() - start)
                backend.crop(base)
    return CostCurve({q: statistics.median(t[1:]) for q, t in times.items()})


def _depths(mask: np.ndarray) -> np.ndarray:
    return mask.sum(axis=1) - 1  # ancestors-or-self minus one = depth below the root


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_dir() -> Path | None:
    configured = os.environ.get("TOKENFORGE_CACHE_DIR")
    if configured == "off":
        return None
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tokenforge"


class CalibrationStore:
    """Named measurements for one (model, device, dtype, backend), persisted as one JSON file."""

    def __init__(self, backend: Backend):
        model = backend.model
        config = json.dumps(model.config.to_dict(), sort_keys=True, default=str)
        identity = "|".join([type(model).__name__, config, device_name(backend.device),
                             str(model.get_input_embeddings().weight.dtype), backend.describe()])
        self.key = hashlib.sha256(identity.encode()).hexdigest()[:20]
        folder = cache_dir()
        self.path = None if folder is None else folder / "calibration" / f"{self.key}.json"

    def get(self, name: str) -> dict | None:
        return self._read().get(name)

    def put(self, name: str, value: dict) -> None:
        if self.path is None:
            return
        data = self._read()
        data[name] = value
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1))
            tmp.replace(self.path)
        except OSError:
            pass  # a read-only or full cache only costs a measurement next time

    def _read(self) -> dict:
        if self.path is None or not self.path.exists():
            return {}
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}


