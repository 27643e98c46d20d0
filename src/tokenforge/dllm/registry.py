"""The diffusion decoders by name, registered like the AR methods (`decoding.registry`): each
file under `dllm/decoders/` registers a `Method` whose `build(dlm, options)` returns a
`Decoder`: the rule that picks the positions to fill and the forwarder that computes logits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tokenforge.decoding.registry import Registry, option, require_positive
from tokenforge.dllm.loop import FORWARDERS, Forwarder, Rule
from tokenforge.errors import InvalidOptionError

DIFFUSION = Registry(("tokenforge.dllm.decoders",), "diffusion decoding")
register = DIFFUSION.register


def get_decoder(name: str):
    return DIFFUSION.get(name)


def all_decoders():
    return DIFFUSION.all()


def is_diffusion_method(name: str) -> bool:
    DIFFUSION.all()
    return name in DIFFUSION.methods


@dataclass(frozen=True)
class BlockOptions:
    """Options every diffusion decoder has: the semi-autoregressive block length."""

    block_length: int = option(32, "positions per block, filled left to right")

    def __post_init__(self):
        require_positive(block_length=self.block_length)


@dataclass(frozen=True)
class CacheOptions(BlockOptions):
    """Block length plus Fast-dLLM's KV cache, for the decoders that take it."""

    cache: str = option("dual", "KV cache: none, prefix or dual", choices=tuple(FORWARDERS))


def check_probability(name: str, **values) -> None:
    for key, value in values.items():
        if not 0.0 < value <= 1.0:
            raise InvalidOptionError(f"{name}: option '{key}' must lie in (0, 1], got {value}")


@dataclass
class Decoder:
    rule: Rule
    forwarder: Callable[..., Forwarder]  # (dlm, stats) -> Forwarder: a class or a partial
    block_length: int
