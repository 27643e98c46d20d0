"""KV-cache operations on transformers caches: make one, run a cached forward, crop, keep a path.

transformers 5.24 renamed the forward argument `past_key_values` to `cache` (the old name goes
in 5.40); `cached_forward` passes whichever name the model's forward takes.
"""

from __future__ import annotations

import inspect
from functools import cache

import torch

from tokenforge.errors import UnsupportedModelError


def new_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


@cache
def _cache_arg(model_class: type) -> str:
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cached_forward(model, input_ids: torch.Tensor, cache, position_ids=None, attention_mask=None):
    """One forward that appends input_ids' KV to `cache`; returns logits of shape (q, vocab)."""
    kwargs = {_cache_arg(type(model)): cache, "use_cache": True}
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    return model(input_ids=input_ids, **kwargs).logits[0]


def cache_len(cache) -> int:
    return cache.get_seq_length()


def crop(cache, length: int) -> None:
    """Keep the first `length` positions. transformers 5.24 refuses a positive crop(n), while
    a negative n removes that many positions in every 5.x release, so we always pass that."""
    extra = cache_len(cache) - length
    if extra > 0:
        cache.crop(-extra)


def keep(cache, prefix_len: int, rows: list[int]) -> None:
    """After a tree forward, keep the prefix plus the tree block's `rows` (ascending, 0 = root),
    moved into contiguous positions; everything else is dropped."""
    if rows != list(range(len(rows))):
        src = torch.tensor(rows, device=_layers(cache)[0].keys.device) + prefix_len
        dst = slice(prefix_len, prefix_len + len(rows))
        for layer in _layers(cache):
            layer.keys[:, :, dst] = layer.keys[:, :, src]
            layer.values[:, :, dst] = layer.values[:, :, src]
    crop(cache, prefix_len + len(rows))


def _layers(cache):
    layers = getattr(cache, "layers", None)
    if not layers or not all(hasattr(layer, "keys") for layer in layers):
        raise UnsupportedModelError(
            f"{type(cache).__name__} does not expose per-layer keys/values, so a token tree's "
            "accepted path cannot be kept; use a chain drafter (e.g. pld) or method=vanilla")
    return layers
