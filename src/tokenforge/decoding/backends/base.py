"""The Backend interface, shared mask helpers, and the choice between the fast path and the fallback.

A backend holds one model's KV cache for one generation at a time. `length` tokens are cached;
`forward(tokens)` appends len(tokens) more and returns their logits; `keep` and `crop` drop what
verification rejected. Positions and masks follow the engine's tree convention: new token r sits
at `positions[r]` (default: its cache slot) and sees every cached token before the last `m`
columns of `mask` (q, m), and among those last m columns the ones `mask` marks True.
"""

from __future__ import annotations

import logging
from functools import cache

import numpy as np
import torch

from tokenforge.errors import InvalidOptionError

BACKENDS = ("auto", "static", "transformers")


class Backend:
    name = "backend"

    def __init__(self, model):
        self.model = model
        self.device = next(model.parameters()).device
        self.vocab_size = model.get_input_embeddings().num_embeddings
        self.length = 0
        self.supports_tree = True

    def begin(self, capacity: int) -> None:
        """Start a generation that will cache at most `capacity` positions."""
        raise NotImplementedError

    def forward(self, tokens: list[int], positions: np.ndarray | None = None,
                mask: np.ndarray | None = None, last_only: bool = False) -> torch.Tensor:
        """Append `tokens`; returns their logits (q, vocab), or the last row's (1, vocab)."""
        raise NotImplementedError

    def keep(self, start: int, rows: list[int]) -> None:
        """Keep the first `start` positions plus the slots start + rows[i] (ascending), moved
        into contiguous positions from `start`; everything after is dropped."""
        raise NotImplementedError

    def crop(self, length: int) -> None:
        """Keep the first `length` positions."""
        raise NotImplementedError

    def layer_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, (keys, values) of the cached positions, each (kv_heads, length, head_dim)."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


def full_mask(q: int, length: int, mask: np.ndarray | None) -> np.ndarray:
    """The (q, length + q) bool mask: everything cached before the block is visible; the block
    is `mask` (q, m) over the last m columns, or causal over the q new tokens when None."""
    out = np.ones((q, length + q), dtype=bool)
    if mask is None:
        out[:, length:] = np.tril(np.ones((q, q), dtype=bool))
    else:
        out[:, length + q - mask.shape[1]:] = mask
    return out


def positions_of(length: int, q: int, positions: np.ndarray | None) -> np.ndarray:
    return np.arange(length, length + q) if positions is None else np.asarray(positions)


def new_backend(model, kind: str = "auto") -> Backend:
    """A backend of `kind` for `model` (auto: static where supported, else transformers)."""
    from tokenforge.decoding.backends.hf import TransformersBackend
    from tokenforge.decoding.backends.static import StaticBackend, unsupported_reason

    if kind not in BACKENDS:
        raise InvalidOptionError(f"unknown backend '{kind}': use {', '.join(BACKENDS)}")
    if kind == "transformers":
        return TransformersBackend(model)
    reason = unsupported_reason(model)
    if reason is None:
        return StaticBackend(model)
    if kind == "static":
        raise InvalidOptionError(f"the static backend cannot run this model: {reason}")
    _say_once(f"tokenforge: the fast path does not support {type(model).__name__} ({reason}); "
              "using transformers' forward")
    return TransformersBackend(model)


def get_backend(loaded, kind: str = "auto", role: str = "target") -> Backend:
    """The backend `loaded` keeps for `role` (built once: packing weights costs time and memory)."""
    key = (kind, role)
    backends = loaded.backends
    if key not in backends:
        backends[key] = new_backend(loaded.model, kind)
    return backends[key]


@cache
def _say_once(message: str) -> None:
    logging.getLogger("tokenforge").warning(message)
