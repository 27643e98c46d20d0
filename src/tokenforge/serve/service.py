"""Requests to engine jobs, and jobs to responses: full JSON, or a stream of server-sent events.

`Service.plan` validates what pydantic cannot (model name, method and options, the max_tokens cap,
token-id prompts over the length limit, one grammar at most) before a request takes a queue slot;
a text prompt is tokenized (and its length checked) and the request's guide built (its grammar
compiled) by the worker before the response starts, so that only the engine thread ever touches
the tokenizer's Rust state and a bad grammar is a 400, streaming or not. The prompts of a batch
run one after the other, one queue slot at a time (each with a guide of its own). A watcher task
cancels the job as soon as the client disconnects, whether it is still queued, running, or
streaming; the request then counts as 499 (`mark_client_closed`).
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
from tokenforge.serve import MAX_BODY_BYTES
from tokenforge.serve.formats import DONE, Format, error_detail, failure_response, sse
from tokenforge.serve.metrics import Metrics
from tokenforge.serve.middleware import CLIENT_CLOSED_REQUEST, mark_client_closed
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
    Started,
    Worker,
    check_prompt_length,
)

DISCONNECT_POLL_S = 0.2


@dataclass
class ServeSettings:
    method: str = "vanilla"  # used when a request names none
    options: dict = field(default_factory=dict)  # options of `method`
    api_key: str | None = None
    max_tokens_cap: int = 512
    max_queue: int = 128  # requests waiting (the running one excluded); more get 429
    max_body_bytes: int = MAX_BODY_BYTES  # a larger request body gets 413 before it is read
    max_prompt_tokens: int | None = None  # a longer prompt gets 400; None: the model's context

    def __post_init__(self):
        for name in ("max_tokens_cap", "max_body_bytes", "max_prompt_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidOptionError(f"{name} must be a positive integer, got {value}")


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
        self.max_prompt_tokens = settings.max_prompt_tokens or loaded.context_length
        self.metrics = Metrics()
        self.worker = Worker(loaded, draft, settings.max_queue, self.metrics,
                             self.max_prompt_tokens)

    def plan(self, body: GenerationFields, prompt: str | list[int]) -> GenerationRequest:
        if body.model not in (None, self.loaded.name):
            raise HTTPException(404, f"model '{body.model}' is not served here; this server "
                                     f"serves '{self.loaded.name}' (see /v1/models)")
        if not isinstance(prompt, str):
            check_prompt_length(len(prompt), self.max_prompt_tokens)
        extension = body.tokenforge or TokenforgeExtension()
        method = extension.method or self.settings.method
        defaults = self.settings.options if method == self.settings.method else {}
        options = {**defaults, **extension.options}
        check_method(method, options, self.draft)
        # SamplingParams decodes greedily below 1e-5 and top-p always keeps the top token
        temperature = 1.0 if body.temperature is None else body.temperature
        top_p = 1.0 if body.top_p is None else body.top_p
        stop = [body.stop] if isinstance(body.stop, str) else body.stop
        guide = body.guide_spec()
        return GenerationRequest(prompt=prompt, method=method, options=options,
                                 max_new_tokens=self._max_tokens(body),
                                 temperature=temperature, top_k=body.top_k or 0, top_p=top_p,
                                 seed=body.seed, stop=stop or None,
                                 logprobs=body.logprobs_count, echo=body.echoes,
                                 guide=None if guide.empty else guide)

    def _max_tokens(self, body: GenerationFields) -> int:
        cap = self.settings.max_tokens_cap
        max_tokens = body.requested_max_tokens()
        if max_tokens is None:
            return min(body.DEFAULT_MAX_TOKENS or cap, cap)
        if max_tokens > cap:
            raise InvalidOptionError(f"max_tokens is {max_tokens} but this server's cap is {cap}")
        if max_tokens == 0 and not body.echoes:
            raise InvalidOptionError("max_tokens 0 generates nothing: it is allowed only with "
                                     "echo: true, to score the prompt")
        return max_tokens

    async def respond(self, request: Request, body: GenerationFields,
                      prompts: list[str | list[int]], fmt: Format):
        arrived = time.perf_counter()
        plans = [self.plan(body, prompt) for prompt in prompts]
        if body.stream:
            if len(plans) > 1:
                raise InvalidOptionError("stream: true takes one prompt; send a list of prompts "
                                         "without streaming, or one request per prompt")
            return await self._respond_streaming(request, plans[0], fmt, body.wants_usage_chunk,
                                                 arrived)
        results = []
        for plan in plans:
            event = await self._run(request, plan)
            if isinstance(event, Failed):
                return failure_response(event.error)
            if isinstance(event, Cancelled):
                return Response(status_code=CLIENT_CLOSED_REQUEST)
            results.append(event.result)
        self.metrics.observe_latency(time.perf_counter() - arrived)
        return fmt.full(results)

    def _submit(self, request: Request, plan: GenerationRequest) -> tuple[Job, asyncio.Task]:
        """Queue `plan` (QueueFullError when the queue is full) and watch its client."""
        job = Job(plan)
        self.worker.submit(job)
        return job, asyncio.create_task(self._cancel_on_disconnect(request, job))

    async def _run(self, request: Request, plan: GenerationRequest) -> Finished | Failed | Cancelled:
        """Queue `plan` and wait for its end."""
        job, watcher = self._submit(request, plan)
        try:
            while True:
                event = await job.next_event()
                if job.done:
                    return event
        finally:
            self._release(request, job, watcher)

    async def _respond_streaming(self, request: Request, plan: GenerationRequest, fmt: Format,
                                 usage_chunk: bool, arrived: float):
        job, watcher = self._submit(request, plan)
        try:
            event = await job.next_event()  # Started, or Failed (e.g. the prompt is too long)
            if isinstance(event, Started):
                stream = self._stream(request, job, watcher, fmt, event.prompt_text, usage_chunk,
                                      arrived)
                job, watcher = None, None  # the stream owns them now
                return StreamingResponse(stream, media_type="text/event-stream")
            if isinstance(event, Failed):
                return failure_response(event.error)
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        finally:
            self._release(request, job, watcher)

    async def _stream(self, request: Request, job: Job, watcher: asyncio.Task, fmt: Format,
                      prompt_text: str, usage_chunk: bool, arrived: float) -> AsyncIterator[str]:
        try:
            for chunk in fmt.opening():
                yield sse(chunk)
            if prompt_text:
                yield sse(fmt.delta(prompt_text))
            while not job.done:
                event = await job.next_event()
                if isinstance(event, Delta):
                    yield sse(fmt.delta(event.text))
                elif isinstance(event, Finished):
                    yield sse(fmt.closing(event.result))
                    if usage_chunk:
                        yield sse(fmt.usage_only(event.result))
                    self.metrics.observe_latency(time.perf_counter() - arrived)
                elif isinstance(event, Failed):
                    yield sse(ErrorResponse(error=error_detail(event.error)))
            yield DONE
        finally:
            self._release(request, job, watcher)

    def _release(self, request: Request, job: Job | None, watcher: asyncio.Task | None) -> None:
        """Stop the watcher; a job still unfinished here lost its client: cancel it (499)."""
        if watcher is not None:
            watcher.cancel()
        if job is not None and not job.done:
            mark_client_closed(request.scope)
            self.worker.cancel(job)

    async def _cancel_on_disconnect(self, request: Request, job: Job) -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)
        mark_client_closed(request.scope)
        self.worker.cancel(job)
