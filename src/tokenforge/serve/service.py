"""Requests to engine jobs, and jobs to responses: full JSON, or a stream of server-sent events.

`Service.plan` validates what pydantic cannot (model name, method and options, the max_tokens cap)
before a request takes a queue slot; the prompt itself is tokenized by the worker, so that only the
engine thread ever touches the tokenizer's Rust state. A watcher task cancels the job as soon as
the client disconnects, whether it is still queued, running, or streaming.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException

from tokenforge.decoding.registry import get_method
from tokenforge.errors import InvalidOptionError, PromptError
from tokenforge.models.load import LoadedModel
from tokenforge.serve.formats import DONE, Format, error_detail, failure_response, sse
from tokenforge.serve.metrics import Metrics
from tokenforge.serve.schemas import (
    ChatMessage,
    ErrorResponse,
    GenerationFields,
    TokenforgeExtension,
)
from tokenforge.serve.worker import (
    Cancelled,
    Delta,
    Failed,
    Finished,
    GenerationRequest,
    Job,
    Worker,
)

DISCONNECT_POLL_S = 0.2
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left; only /metrics ever sees it


@dataclass
class ServeSettings:
    method: str = "vanilla"  # used when a request names none
    options: dict = field(default_factory=dict)  # options of `method`
    api_key: str | None = None
    max_tokens_cap: int = 512
    max_queue: int = 128  # requests waiting (the running one excluded); more get 429


def check_method(method: str, options: dict, draft: LoadedModel | None) -> None:
    """Raise InvalidOptionError for an unknown method, bad options or a missing draft model."""
    spec = get_method(method)
    spec.resolve_options(options)
    if spec.needs_draft and draft is None:
        raise InvalidOptionError(f"method '{method}' needs a draft model, and this server has "
                                 "none: start it with --draft-model")


def render_chat(tokenizer, messages: list[ChatMessage]) -> str:
    from jinja2 import TemplateError

    if not getattr(tokenizer, "chat_template", None):
        raise PromptError("this model's tokenizer has no chat template, so /v1/chat/completions "
                          "cannot build a prompt from messages; use /v1/completions with plain "
                          "text, or serve a model whose tokenizer defines a chat_template")
    try:
        return tokenizer.apply_chat_template([m.as_template_input() for m in messages],
                                             tokenize=False, add_generation_prompt=True)
    except TemplateError as err:
        raise PromptError(f"the model's chat template rejected these messages: {err}") from None


class Service:
    """Turns validated requests into engine jobs and jobs into responses."""

    def __init__(self, loaded: LoadedModel, draft: LoadedModel | None, settings: ServeSettings):
        check_method(settings.method, settings.options, draft)
        self.loaded, self.draft, self.settings = loaded, draft, settings
        self.metrics = Metrics()
        self.worker = Worker(loaded, draft, settings.max_queue, self.metrics)

    def plan(self, body: GenerationFields, prompt: str | list[int]) -> GenerationRequest:
        if body.model not in (None, self.loaded.name):
            raise HTTPException(404, f"model '{body.model}' is not served here; this server "
                                     f"serves '{self.loaded.name}' (see /v1/models)")
        extension = body.tokenforge or TokenforgeExtension()
        method = extension.method or self.settings.method
        defaults = self.settings.options if method == self.settings.method else {}
        options = {**defaults, **extension.options}
        check_method(method, options, self.draft)
        cap = self.settings.max_tokens_cap
        max_tokens = body.requested_max_tokens() or min(body.DEFAULT_MAX_TOKENS or cap, cap)
        if max_tokens > cap:
            raise InvalidOptionError(f"max_tokens is {max_tokens} but this server's cap is {cap}")
        # SamplingParams decodes greedily below 1e-5 and top-p always keeps the top token
        temperature = 1.0 if body.temperature is None else body.temperature
        top_p = 1.0 if body.top_p is None else body.top_p
        stop = [body.stop] if isinstance(body.stop, str) else body.stop
        return GenerationRequest(prompt=prompt, method=method, options=options,
                                 max_new_tokens=max_tokens, temperature=temperature,
                                 top_k=body.top_k or 0, top_p=top_p, seed=body.seed,
                                 stop=stop or None)

    async def respond(self, request: Request, body: GenerationFields, prompt: str | list[int],
                      fmt: Format):
        arrived = time.perf_counter()
        job = Job(self.plan(body, prompt))
        self.worker.submit(job)
        watcher = asyncio.create_task(self._cancel_on_disconnect(request, job))
        try:
            event = await job.next_event()  # Started, or Failed (e.g. the prompt is too long)
            if body.stream and not job.done:
                stream = self._stream(job, watcher, fmt, body.wants_usage_chunk, arrived)
                job, watcher = None, None  # the stream owns them now
                return StreamingResponse(stream, media_type="text/event-stream")
            while not job.done:
                event = await job.next_event()
            if isinstance(event, Failed):
                return failure_response(event.error)
            if isinstance(event, Cancelled):
                return Response(status_code=CLIENT_CLOSED_REQUEST)
            self.metrics.observe_latency(time.perf_counter() - arrived)
            return fmt.full(event.generation)
        finally:
            self._release(job, watcher)

    async def _stream(self, job: Job, watcher: asyncio.Task, fmt: Format, usage_chunk: bool,
                      arrived: float) -> AsyncIterator[str]:
        try:
            for chunk in fmt.opening():
                yield sse(chunk)
            while not job.done:
                event = await job.next_event()
                if isinstance(event, Delta):
                    yield sse(fmt.delta(event.text))
                elif isinstance(event, Finished):
                    yield sse(fmt.closing(event.generation))
                    if usage_chunk:
                        yield sse(fmt.usage_only(event.generation))
                    self.metrics.observe_latency(time.perf_counter() - arrived)
                elif isinstance(event, Failed):
                    yield sse(ErrorResponse(error=error_detail(event.error)))
            yield DONE
        finally:
            self._release(job, watcher)

    def _release(self, job: Job | None, watcher: asyncio.Task | None) -> None:
        if watcher is not None:
            watcher.cancel()
        if job is not None and not job.done:
            self.worker.cancel(job)

    async def _cancel_on_disconnect(self, request: Request, job: Job) -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)
        self.worker.cancel(job)
