"""The transformers baselines, run through `model.generate` in the benchmark's process.

- `hf-greedy`: plain `generate` (sampling when --temperature > 0);
- `hf-pld`: `prompt_lookup_num_tokens` (10 by default);
- `hf-assisted`: `assistant_model` = the draft model.

Every generation setting is passed explicitly, so the model's own `generation_config` (a default
temperature, top_k, max_length, ...) changes nothing: exactly `max_new_tokens` new tokens unless an
EOS token of the engine's EOS set comes first, no top-k/top-p unless asked, batch of one with a
full attention mask. Target forwards are counted by a forward hook on the target model.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from tokenforge.decoding.engine import eos_token_ids
from tokenforge.decoding.registry import Method, option, require_positive
from tokenforge.errors import UnsupportedModelError
from tokenforge.models.load import LoadedModel


@dataclass(frozen=True)
class HFPLDOptions:
    prompt_lookup_num_tokens: int = option(10, "tokens drafted per match")

    def __post_init__(self):
        require_positive(prompt_lookup_num_tokens=self.prompt_lookup_num_tokens)


BASELINES: dict[str, Method] = {m.name: m for m in (
    Method("hf-greedy", "transformers GenerationMixin.generate",
           "transformers generate(): greedy (or plain sampling with --temperature)", None),
    Method("hf-pld", "Prompt Lookup Decoding (Saxena 2023), transformers implementation",
           "transformers generate(prompt_lookup_num_tokens=...)", None,
           options_type=HFPLDOptions),
    Method("hf-assisted", "assisted generation (Leviathan et al.), transformers implementation",
           "transformers generate(assistant_model=the draft model)", None, needs_draft=True),
)}


class HFDecoder:
    """`decode(prompt_ids, seed) -> (new token ids, target forwards)` through `model.generate`."""

    def __init__(self, target: LoadedModel, draft: LoadedModel | None, method: Method,
                 options: dict, max_new_tokens: int, temperature: float):
        self.model, self.name = target.model, method.name
        eos = sorted(eos_token_ids(target.model, target.tokenizer))
        pad = eos[0] if eos else (target.tokenizer.pad_token_id or 0)
        sampling = temperature > 0
        self.kwargs = dict(
            max_new_tokens=max_new_tokens, max_length=None, min_length=0, min_new_tokens=None,
            do_sample=sampling, temperature=temperature if sampling else None,
            top_k=0 if sampling else None, top_p=1.0 if sampling else None,
            eos_token_id=eos or None, pad_token_id=pad, **options)
        if method.needs_draft:
            self.kwargs["assistant_model"] = draft.model
        self.forwards = 0

    def _count(self, *_) -> None:
        self.forwards += 1

    def __call__(self, prompt_ids: list[int], seed: int | None
                 ) -> tuple[list[int], int, None]:
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([prompt_ids], device=device)
        if seed is not None:
            torch.manual_seed(seed)
        self.forwards = 0
        hook = self.model.register_forward_hook(self._count)
        try:
            with quiet_transformers(), torch.inference_mode():
                out = self.model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                          **self.kwargs)
        except (ValueError, TypeError, RuntimeError) as err:
            raise UnsupportedModelError(f"transformers generate() failed for {self.name} on "
                                        f"this model: {str(err).splitlines()[0]}") from None
        finally:
            hook.remove()
        return out[0, len(prompt_ids):].tolist(), self.forwards, None  # no timers


@contextmanager
def quiet_transformers():
    """transformers logs deprecation notes from inside generate() (e.g. assisted generation's
    own generation_config); they say nothing about the benchmark, so errors only."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
