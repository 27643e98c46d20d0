"""generate(model, prompt, method="vanilla", **options) -> Generation."""

from __future__ import annotations

from collections.abc import Callable

from tokenforge.decoding import engine
from tokenforge.decoding.backends import get_backend
from tokenforge.decoding.drafters.base import Drafter
from tokenforge.decoding.engine import Generation
from tokenforge.decoding.registry import get_method
from tokenforge.decoding.sampling import SamplingParams, is_integer
from tokenforge.dllm.model import is_dllm
from tokenforge.dllm.registry import is_diffusion_method
from tokenforge.errors import InvalidOptionError, PromptError
from tokenforge.guides import Guide, GuideSpec, make_guide
from tokenforge.models.load import LoadedModel, load_model


def encode_prompt(loaded: LoadedModel, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        if not prompt:
            raise PromptError("the prompt is empty: give at least one character of text")
        ids = loaded.tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
    elif isinstance(prompt, (list, tuple)) and all(is_integer(t) for t in prompt):
        ids = [int(t) for t in prompt]
    else:
        raise PromptError(f"the prompt must be a str or a list of token ids (int), got "
                          f"{type(prompt).__name__}" + (
                              "; decode bytes first, e.g. prompt.decode('utf-8')"
                              if isinstance(prompt, (bytes, bytearray)) else ""))
    if not ids:
        raise PromptError("the prompt encodes to no tokens: give a non-empty prompt")
    vocab = loaded.model.get_input_embeddings().num_embeddings
    if not all(0 <= t < vocab for t in ids):
        raise PromptError(f"prompt token ids must lie in [0, {vocab})")
    context = loaded.context_length
    if context is not None and len(ids) >= context:
        raise PromptError(f"the prompt has {len(ids)} tokens but the model's context is {context}; "
                          f"shorten the prompt to fewer than {context} tokens")
    return ids


def generate(model: LoadedModel | str, prompt: str | list[int], method: str = "vanilla",
             max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int | None = None, stop: list[str] | str | None = None,
             on_text: Callable[[str], None] | None = None, draft: LoadedModel | str | None = None,
             drafter: Drafter | None = None, should_stop: Callable[[], bool] | None = None,
             logprobs: int | None = None, echo: bool = False, sampler: str = "gumbel",
             backend: str = "auto", guide: Guide | GuideSpec | None = None, **options) -> Generation:
    """Decode `prompt` with `method`; greedy unless `temperature` > 0.

    `model` and `draft` are LoadedModels or specs for `load_model` ("demo", a directory, a hub
    id). `options` are the method's own (see `tokenforge methods`); `draft` is the draft model of
    the draft-model methods; `on_text` receives text as it is produced; `should_stop()` is asked
    before every step (True ends the generation, finish_reason "cancelled"); `drafter` reuses a
    drafter built by `make_drafter` (the benchmark and the server do, to keep its state).
    `logprobs=N` adds each new token's log-probability and the N most likely alternatives
    (`Generation.logprobs`); `echo=True` adds the prompt's (`Generation.prompt_logprobs`), and
    then `max_new_tokens` may be 0. `sampler` ("gumbel" or "rejection") chooses how sampling
    works when temperature > 0 (see decoding/sampling.py); `backend` ("auto", "static",
    "transformers") how the target's forwards run. `guide` (a Guide, or a GuideSpec built with
    `make_guide`) constrains the new tokens; then finish_reason "guide" says it allowed none.
    """
    model = _loaded(model, "model")
    if is_dllm(model.model) or is_diffusion_method(method):
        return _diffuse(model, prompt, method, max_new_tokens, temperature, seed, on_text,
                        unsupported={"draft": draft, "drafter": drafter, "stop": stop,
                                     "logprobs": logprobs, "guide": guide, "top_k": top_k or None,
                                     "top_p": None if top_p == 1.0 else top_p,
                                     "echo": echo or None}, **options)
    draft = _loaded(draft, "draft") if draft is not None else None
    minimum = 0 if echo else 1
    if not is_integer(max_new_tokens) or max_new_tokens < minimum:
        raise InvalidOptionError(f"max_new_tokens must be an integer >= {minimum}, got "
                                 f"{max_new_tokens!r}" + (" (0 only with echo=True)" if not echo
                                                          else ""))
    if logprobs is not None and (not is_integer(logprobs) or not 0 <= logprobs <= 20):
        raise InvalidOptionError(f"logprobs must be an integer in [0, 20], got {logprobs!r}")
    if on_text is not None and not callable(on_text):
        raise InvalidOptionError(f"on_text must be callable, got {type(on_text).__name__}")
    if should_stop is not None and not callable(should_stop):
        raise InvalidOptionError(f"should_stop must be callable, got {type(should_stop).__name__}")
    sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                              sampler=sampler)
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, (list, tuple))
                                 and all(isinstance(s, str) and s for s in stop)):
        raise InvalidOptionError("stop must be a non-empty string or a list of them")
    if drafter is None:
        drafter = make_drafter(model, method, draft, **options)
    elif options:
        raise InvalidOptionError("pass options to make_drafter when you pass a drafter")
    if isinstance(guide, GuideSpec):
        guide = make_guide(model, guide)
    if guide is not None and not isinstance(guide, Guide):
        raise InvalidOptionError(f"guide must be a tokenforge Guide or GuideSpec, got "
                                 f"{type(guide).__name__}")
    prompt_ids = encode_prompt(model, prompt)
    return engine.run(get_backend(model, backend), model.tokenizer, prompt_ids, drafter,
                      sampling, max_new_tokens, model.context_length, list(stop or []) or None,
                      on_text, should_stop=should_stop, logprobs=logprobs, echo=echo,
                      method=method, guide=guide)


def _diffuse(model: LoadedModel, prompt, method: str, max_new_tokens: int, temperature: float,
             seed: int | None, on_text, unsupported: dict, **options):
    """A masked-diffusion model's generation (tokenforge.dllm.diffuse); the text is handed to
    `on_text` once the canvas is filled."""
    from tokenforge.dllm.api import check_pairing, diffuse

    check_pairing(model.model, method)
    given = [name for name, value in unsupported.items() if value is not None]
    if given:
        raise InvalidOptionError(f"the diffusion decoders do not take {', '.join(given)}")
    result = diffuse(model, prompt, method, max_new_tokens, temperature, seed, **options)
    if on_text is not None and result.text:
        on_text(result.text)
    return result


def _loaded(model, role: str) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, str):
        return load_model(model)
    raise InvalidOptionError(f"{role} must be a LoadedModel (from tokenforge.load_model) or a "
                             f"model name such as 'demo', got {type(model).__name__}")


def make_drafter(model: LoadedModel, method: str, draft: LoadedModel | None = None, **options
                 ) -> Drafter | None:
    """The drafter for `method` with its options resolved (None for plain decoding)."""
    spec = get_method(method)
    parsed = spec.parse(options)
    if spec.needs_draft and draft is None:
        raise InvalidOptionError(f"method '{method}' needs a draft model: pass draft= (CLI: "
                                 "--draft-model demo-draft)")
    if spec.build is None:
        return None
    return spec.build(model, draft, parsed)
