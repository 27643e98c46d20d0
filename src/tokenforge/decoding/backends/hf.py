"""The fallback backend: the model's own transformers forward over a `DynamicCache`.

Works for any Hugging Face causal LM. transformers 5.24 renamed the forward argument
`past_key_values` to `cache` (the old name goes in 5.40); the forward gets whichever name the
model takes. Models whose attention kernel ignores custom masks (flash-attention) cannot run a
token tree: `supports_tree` is False and the engine verifies the tree's first chain instead.
"""

from __future__ import annotations

import inspect
from functools import cache

import numpy as np
import torch

from tokenforge.decoding.backends.base import Backend, full_mask, positions_of
from tokenforge.errors import UnsupportedModelError

NO_TREE_MASK = {"flash_attention_2", "flash_attention_3"}


@cache
def cache_argument(model_class: type) -> str:
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, model):
        super().__init__(model)
        self.cache = None
        self.supports_tree = getattr(model.config, "_attn_implementation", None) not in NO_TREE_MASK

    def begin(self, capacity: int) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        self.length = 0

    def forward(self, tokens: list[int], positions: np.ndarray | None = None,
                mask: np.ndarray | None = None, last_only: bool = False) -> torch.Tensor:
        q = len(tokens)
        kwargs = {cache_argument(type(self.model)): self.cache, "use_cache": True}
        if mask is not None or positions is not None:
            kwargs["position_ids"] = torch.from_numpy(
                positions_of(self.length, q, positions))[None].to(self.device)
            kwargs["attention_mask"] = torch.from_numpy(
                full_mask(q, self.length, mask))[None, None].to(self.device)
        if last_only:
            kwargs["logits_to_keep"] = 1
        try:
            out = self.model(input_ids=torch.tensor([tokens], device=self.device), **kwargs)
        except (RuntimeError, ValueError, TypeError) as err:
            if mask is None:
                raise
            raise UnsupportedModelError(
                f"{type(self.model).__name__} could not run a token tree with a custom 4D "
                f"attention mask ({str(err).splitlines()[0]}); use a chain method such as pld "
                "or sps") from None
        self.length += q
        return out.logits[0]

    def keep(self, start: int, rows: list[int]) -> None:
        if rows != list(range(len(rows))):
            layers = self._layers()
            src = torch.tensor(rows, device=layers[0].keys.device) + start
            dst = slice(start, start + len(rows))
            for layer in layers:
                layer.keys[:, :, dst] = layer.keys[:, :, src]
                layer.values[:, :, dst] = layer.values[:, :, src]
        self.crop(start + len(rows))

    def crop(self, length: int) -> None:
        """transformers 5.24 refuses a positive crop(n), while a negative n removes that many
        positions in every 5.x release, so we always pass that."""
        extra = self.cache.get_seq_length() - length
        if extra > 0:
            self.cache.crop(-extra)
        self.length = min(self.length, length)

    def layer_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(layer.keys[0], layer.values[0]) for layer in self._layers()]

    def _layers(self):
        layers = getattr(self.cache, "layers", None)
        if not layers or not all(hasattr(layer, "keys") for layer in layers):
            raise UnsupportedModelError(
                f"{type(self.cache).__name__} does not expose per-layer keys/values, so a token "
                "tree's accepted path cannot be kept; use a chain drafter (e.g. pld) or "
                "method=vanilla")
        return layers
