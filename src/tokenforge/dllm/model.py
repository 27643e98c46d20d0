"""A masked-diffusion LM on a transformers Llama: bidirectional forwards with per-layer KV caches.

A tokenforge diffusion model is a `LlamaForCausalLM` checkpoint (so `from_pretrained` loads it)
whose config carries `tokenforge_dllm = {"mask_token_id", "shift", "train_len"}`. It must be run
with full (bidirectional) attention: `DiffusionLM` does that with its own forward over the Llama
modules' weights, which also gives the decoders what transformers' forward does not: a KV cache
for any set of positions (prefix, or prefix and suffix), the attention row of one query, and a
refresh of only the deeper layers.

`shift=True` (Dream/DiffuLLaMA style, used by `demo-dllm`, which starts from the AR `demo`'s
weights): the output at position i predicts the token at i + 1, as in the AR model it came from,
so a masked position p is predicted from the output at p - 1. Position 0 is never predicted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tokenforge.errors import InvalidOptionError

DLLM_KEY = "tokenforge_dllm"
MASK_TOKEN = "<|mask|>"


def is_dllm(model) -> bool:
    """Whether a (transformers) model's config marks it as a tokenforge masked-diffusion LM."""
    return isinstance(getattr(getattr(model, "config", None), DLLM_KEY, None), dict)


def is_dllm_checkpoint(spec: str) -> bool:
    """Whether a bundled name or local model directory holds a tokenforge diffusion model (hub
    ids are not looked up: they load as AR models unless their config says otherwise)."""
    import json
    from pathlib import Path

    from tokenforge.models.load import DEMO_DIR, DEMO_MODELS

    path = DEMO_DIR / spec if spec in DEMO_MODELS else Path(spec).expanduser()
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config.get(DLLM_KEY), dict)


@dataclass
class KVCache:
    """Keys and values of every layer for the tokens at `positions` (any order, any subset)."""

    keys: list[torch.Tensor]  # per layer: [1, kv_heads, N, head_dim], rotary applied
    values: list[torch.Tensor]
    positions: torch.Tensor  # [N]

    def select(self, keep: torch.Tensor) -> KVCache:
        """The entries whose `keep` (bool, [N]) is True."""
        return KVCache([k[:, :, keep] for k in self.keys], [v[:, :, keep] for v in self.values],
                       self.positions[keep])

    def without(self, positions: torch.Tensor) -> KVCache:
        return self.select(~torch.isin(self.positions, positions))


@dataclass
class ForwardOut:
    hidden: torch.Tensor  # final hidden states of the query tokens, [B, T, H] (before the norm)
    cache: KVCache | None  # the query tokens' own keys/values, when asked for
    probe: list[torch.Tensor] | None  # per layer: attention of query `probe` over all keys [N+T]
    layer_inputs: list[torch.Tensor] | None  # per layer: the query tokens' input hidden states


class DiffusionLM:
    """A loaded masked-diffusion model: its weights, tokenizer, mask id and training length."""

    def __init__(self, loaded):
        if not is_dllm(loaded.model):
            raise InvalidOptionError(
                f"'{loaded.name}' is not a masked-diffusion model (its config has no "
                f"'{DLLM_KEY}' entry); the diffusion decoders need one such as demo-dllm")
        spec = getattr(loaded.model.config, DLLM_KEY)
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.mask_id = int(spec["mask_token_id"])
        self.shift = bool(spec.get("shift", True))
        self.train_len = int(spec.get("train_len", loaded.context_length or 512))
        self.eos_id = self.model.config.eos_token_id
        inner = self.model.model
        self.embed, self.layers, self.norm = inner.embed_tokens, inner.layers, inner.norm
        self.rotary, self.head = inner.rotary_emb, self.model.lm_head
        attn = self.layers[0].self_attn
        self.head_dim, self.groups = attn.head_dim, attn.num_key_value_groups
        self.scaling = attn.scaling

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None,
                collect: bool = False, probe: int | None = None, start_layer: int = 0,
                hidden: torch.Tensor | None = None, layer_inputs: bool = False) -> ForwardOut:
        """Run the query tokens `ids` ([B, T]) at `positions` ([T]) through the layers, every
        query attending to every cached token and every query token (no causal mask).

        `collect` returns the queries' own keys/values; `probe` (a query index) the attention of
        that query over [cache, queries] per layer, averaged over heads; `start_layer` with
        `hidden` (the queries' inputs to that layer) runs only the layers from there on, and
        `cache` must then hold those layers only (index 0 = `start_layer`); `layer_inputs`
        returns each run layer's input hidden states."""
        h = self.embed(ids) if hidden is None else hidden
        cos, sin = self.rotary(h, positions[None].expand(h.shape[0], -1))
        cos, sin = cos[:, None], sin[:, None]
        keys, values, probes, inputs = [], [], [], []
        for i, layer in enumerate(self.layers[start_layer:]):
            if layer_inputs:
                inputs.append(h)
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            shape = (*x.shape[:-1], -1, self.head_dim)
            q = attn.q_proj(x).view(shape).transpose(1, 2)
            k = attn.k_proj(x).view(shape).transpose(1, 2)
            v = attn.v_proj(x).view(shape).transpose(1, 2)
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
            if collect:
                keys.append(k)
                values.append(v)
            if cache is not None:
                k = torch.cat([cache.keys[i].expand(k.shape[0], -1, -1, -1), k], dim=2)
                v = torch.cat([cache.values[i].expand(v.shape[0], -1, -1, -1), v], dim=2)
            k = k.repeat_interleave(self.groups, dim=1)
            v = v.repeat_interleave(self.groups, dim=1)
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scaling)
            if probe is not None:
                scores = (q[:1, :, probe:probe + 1] @ k[:1].transpose(-1, -2)).float()
                probes.append(torch.softmax(scores * self.scaling, dim=-1).mean(dim=1)[0, 0])
            h = h + attn.o_proj(out.transpose(1, 2).reshape(*x.shape[:-1], -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        kv = KVCache(keys, values, positions) if collect else None
        return ForwardOut(h, kv, probes if probe is not None else None,
                          inputs if layer_inputs else None)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(hidden)).float()

    def full_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits predicting every position of `ids` ([B, T]) from one uncached forward; with
        `shift`, row p comes from the output at p - 1 (row 0 is that of position 0, unused)."""
        positions = torch.arange(ids.shape[1], device=ids.device)
        out = self.logits(self.forward(ids, positions).hidden)
        return torch.cat([out[:, :1], out[:, :-1]], dim=1) if self.shift else out

    def predict(self, ids: torch.Tensor, start: int, end: int, cache: KVCache | None = None,
                stop: int | None = None, **forward_kw) -> tuple[torch.Tensor, ForwardOut]:
        """Logits ([end - start, V]) predicting positions [start, end) of the sequence `ids`
        ([T]). The forward runs the query tokens [start - shift, stop or end) and reads every
        other position from `cache` (which must hold exactly the positions outside them; none
        means a full forward)."""
        first = start - 1 if self.shift else start
        if cache is None:
            first, stop = 0, len(ids)
        stop = end if stop is None else stop
        positions = torch.arange(first, stop, device=ids.device)
        out = self.forward(ids[None, first:stop], positions, cache, **forward_kw)
        offset = start - first - (1 if self.shift else 0)
        return self.logits(out.hidden[0, offset:offset + end - start]), out

def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
