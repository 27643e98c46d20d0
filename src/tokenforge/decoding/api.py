"""generate(model, prompt, method="vanilla", **options) -> Generation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tokenforge.decoding import engine
from tokenforge.decoding.engine import GenerationStats
from tokenforge.decoding.registry import get_method
from tokenforge.decoding.sampling import SamplingParams
from tokenforge.errors import InvalidOptionError, PromptError
from tokenforge.models.load import LoadedModel


@dataclass
class Generation:
    text: str
    token_ids: list[int]  # new tokens only
    stats: GenerationStats
    method: str


def encode_prompt(loaded: LoadedModel, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        if not prompt:
            raise PromptError("the prompt is empty: give at least one character of text")
        ids = loaded.tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
    else:
        ids = [int(t) for t in prompt]
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


def generate(model: LoadedModel, prompt: str | list[int], method: str = "vanilla",
             max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int | None = None, stop: list[str] | str | None = None,
             on_text: Callable[[str], None] | None = None, draft: LoadedModel | None = None,
             drafter=None, should_stop: Callable[[], bool] | None = None, **options) -> Generation:
    """Decode `prompt` with `method`; greedy unless `temperature` > 0.

    `options` are the method's own (see `tokenforge methods`); `draft` is the draft model for the
    draft-model methods; `on_text` receives text as it is produced; `should_stop()` is asked
    before every step (True ends the generation, finish_reason "cancelled"); `drafter` reuses a
    drafter built by `make_drafter` (the benchmark does, to keep drafter state across prompts).
    """
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens <= 0:
        raise InvalidOptionError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not all(isinstance(s, str) and s for s in stop):
        raise InvalidOptionError("stop must be a non-empty string or a list of them")
    if drafter is None:
        drafter = make_drafter(model, method, draft, **options)
    elif options:
        raise InvalidOptionError("pass options to make_drafter when you pass a drafter")
    prompt_ids = encode_prompt(model, prompt)
    if hasattr(drafter, "generate_ids"):  # a schedule that changes the loop itself (e.g. PEARL)
        ids, text, stats = drafter.generate_ids(model.model, model.tokenizer, prompt_ids, sampling,
                                                max_new_tokens, model.context_length, stop, on_text,
                                                should_stop=should_stop)
    else:
        ids, text, stats = engine.run(model.model, model.tokenizer, prompt_ids, drafter, sampling,
                                      max_new_tokens, model.context_length, stop, on_text,
                                      should_stop=should_stop)
    return Generation(text=text, token_ids=ids, stats=stats, method=method)


def make_drafter(model: LoadedModel, method: str, draft: LoadedModel | None = None, **options):
    """The drafter for `method` with its options resolved (None for plain decoding)."""
    spec = get_method(method)
    resolved = spec.resolve_options(options)
    if spec.needs_draft and draft is None:
        raise InvalidOptionError(f"method '{method}' needs a draft model: pass draft= (CLI: "
                                 "--draft-model demo-draft)")
    if spec.factory is None:
        return None
    return spec.factory(model, draft, **resolved)
