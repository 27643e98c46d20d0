"""diffuse(model, prompt, method="llada", gen_length=64, **options) -> DiffusionGeneration.

`tokenforge.generate` and `tokenforge generate` route here when the model is a masked-diffusion
model (its `max_new_tokens` is the canvas length), so every diffusion decoder runs from the API,
the CLI and the benchmark.
"""

from __future__ import annotations

from tokenforge.decoding.sampling import is_integer
from tokenforge.dllm import loop
from tokenforge.dllm.model import DiffusionLM, is_dllm
from tokenforge.dllm.registry import Decoder, all_decoders, get_decoder
from tokenforge.errors import InvalidOptionError, PromptError
from tokenforge.models.load import LoadedModel, load_model


def diffusion_model(model: LoadedModel | DiffusionLM | str) -> DiffusionLM:
    if isinstance(model, DiffusionLM):
        return model
    loaded = load_model(model) if isinstance(model, str) else model
    if not isinstance(loaded, LoadedModel):
        raise InvalidOptionError(f"model must be a LoadedModel or a name such as 'demo-dllm', "
                                 f"got {type(model).__name__}")
    return DiffusionLM(loaded)


def make_decoder(method: str, **options) -> Decoder:
    spec = get_decoder(method)
    return spec.build(None, spec.parse(options))


def diffuse(model: LoadedModel | DiffusionLM | str, prompt: str | list[int],
            method: str = "llada", gen_length: int = 64, temperature: float = 0.0,
            seed: int | None = None, decoder: Decoder | None = None,
            **options) -> loop.DiffusionGeneration:
    """Fill `gen_length` masked positions after `prompt` with the diffusion decoder `method`
    (see `tokenforge methods`); greedy unless `temperature` > 0. `decoder` reuses one built by
    `make_decoder` (Learn2PD's loads its filter once)."""
    from tokenforge.decoding.api import encode_prompt

    dlm = diffusion_model(model)
    if not is_integer(gen_length) or gen_length < 1:
        raise InvalidOptionError(f"gen_length (max_new_tokens) must be an integer >= 1, got "
                                 f"{gen_length!r}")
    if not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise InvalidOptionError(f"temperature must be a number >= 0, got {temperature!r}")
    if decoder is None:
        decoder = make_decoder(method, **options)
    elif options:
        raise InvalidOptionError("pass options to make_decoder when you pass a decoder")
    ids = encode_prompt(dlm.loaded, prompt)
    if dlm.mask_id in ids:
        raise PromptError(f"the prompt contains the mask token (id {dlm.mask_id}); remove it")
    if len(ids) + gen_length > dlm.train_len:
        raise PromptError(f"prompt ({len(ids)} tokens) + gen_length ({gen_length}) exceed the "
                          f"{dlm.train_len} positions the model was trained on; shorten the "
                          f"prompt (e.g. keep its last {max(1, dlm.train_len - gen_length)} "
                          "tokens) or gen_length")
    return loop.run(dlm, ids, gen_length, decoder.block_length, decoder.rule, decoder.forwarder,
                    loop.Sampler(temperature, seed), method)


def check_pairing(model, method: str) -> None:
    """A clear error when an AR method meets a diffusion model or the other way round."""
    names = [m.name for m in all_decoders()]
    if is_dllm(model) and method not in names:
        raise InvalidOptionError(f"'{method}' is an autoregressive method but this is a "
                                 f"masked-diffusion model; use one of {', '.join(names)}")
    if not is_dllm(model) and method in names:
        raise InvalidOptionError(f"'{method}' decodes masked-diffusion models (such as "
                                 "demo-dllm); this model is autoregressive")
