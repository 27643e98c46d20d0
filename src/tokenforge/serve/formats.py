"""OpenAI bodies: full responses, the chunks of a stream, and error bodies.

`CompletionFormat` and `ChatFormat` share one interface, so the app streams and answers both
endpoints with the same code. Streamed chunks are sent as server-sent events (`sse`).
"""

from __future__ import annotations

import time
import uuid

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from tokenforge.decoding.api import Generation
from tokenforge.errors import TokenforgeError
from tokenforge.serve.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    Completion,
    CompletionChoice,
    ErrorDetail,
    ErrorResponse,
    FinishReason,
    Usage,
)

DONE = "data: [DONE]\n\n"


def sse(body: BaseModel) -> str:
    return f"data: {body.model_dump_json()}\n\n"


def finish_reason(generation: Generation) -> FinishReason:
    """The engine's eos/stop/length/context in OpenAI's two words."""
    return "stop" if generation.stats.finish_reason in ("eos", "stop") else "length"


def usage(generation: Generation) -> Usage:
    stats = generation.stats
    return Usage(prompt_tokens=stats.prompt_tokens, completion_tokens=stats.new_tokens,
                 total_tokens=stats.prompt_tokens + stats.new_tokens,
                 mean_accepted_tokens=round(stats.mean_accepted_tokens, 4))


class _Format:
    prefix = ""

    def __init__(self, model: str):
        self.meta = {"id": f"{self.prefix}-{uuid.uuid4().hex}", "created": int(time.time()),
                     "model": model}

    def opening(self) -> list[BaseModel]:
        """Chunks sent before the first text."""
        return []


class CompletionFormat(_Format):
    prefix = "cmpl"

    def full(self, generation: Generation) -> Completion:
        return Completion(**self.meta, usage=usage(generation), choices=[CompletionChoice(
            text=generation.text, finish_reason=finish_reason(generation),
            token_ids=generation.token_ids)])

    def delta(self, text: str) -> Completion:
        return Completion(**self.meta, choices=[CompletionChoice(text=text)])

    def closing(self, generation: Generation) -> Completion:
        return Completion(**self.meta, choices=[CompletionChoice(
            text="", finish_reason=finish_reason(generation), token_ids=generation.token_ids)])

    def usage_only(self, generation: Generation) -> Completion:
        return Completion(**self.meta, choices=[], usage=usage(generation))


class ChatFormat(_Format):
    prefix = "chatcmpl"

    def full(self, generation: Generation) -> ChatCompletion:
        return ChatCompletion(**self.meta, usage=usage(generation), choices=[ChatChoice(
            message=AssistantMessage(content=generation.text),
            finish_reason=finish_reason(generation), token_ids=generation.token_ids)])

    def opening(self) -> list[BaseModel]:
        return [self._chunk(ChatDelta(role="assistant", content=""))]

    def delta(self, text: str) -> ChatCompletionChunk:
        return self._chunk(ChatDelta(content=text))

    def closing(self, generation: Generation) -> ChatCompletionChunk:
        return self._chunk(ChatDelta(), finish_reason=finish_reason(generation),
                           token_ids=generation.token_ids)

    def usage_only(self, generation: Generation) -> ChatCompletionChunk:
        return ChatCompletionChunk(**self.meta, choices=[], usage=usage(generation))

    def _chunk(self, delta: ChatDelta, **choice) -> ChatCompletionChunk:
        return ChatCompletionChunk(**self.meta, choices=[ChatChunkChoice(delta=delta, **choice)])


Format = CompletionFormat | ChatFormat


def error_response(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=message, type=kind))
    return JSONResponse(body.model_dump(), status_code=status)


def error_detail(err: Exception) -> ErrorDetail:
    if isinstance(err, TokenforgeError):
        return ErrorDetail(message=str(err), type="invalid_request_error")
    return ErrorDetail(message=f"the server failed on this request: {type(err).__name__}: {err}",
                       type="server_error")


def failure_response(err: Exception) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=error_detail(err)).model_dump(), status_code=400)
