"""OpenAI bodies: full responses, the chunks of a stream, log-probabilities, and error bodies.

`CompletionFormat` and `ChatFormat` share one interface, so the app streams and answers both
endpoints with the same code. Streamed chunks are sent as server-sent events (`sse`).

Tokens are shown to clients as each token decoded alone; a token whose bytes are not valid UTF-8
on their own (a piece of a multi-byte character, in byte-level BPE) is shown as `bytes:\\xNN...`,
the form OpenAI's legacy completions use; chat logprobs also carry each token's exact `bytes`.
`TokenRenderer` does that work on the engine thread, the only one that touches the tokenizer.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass

from fastapi.responses import JSONResponse
from pydantic import BaseModel
from tokenizers import decoders
from transformers.convert_slow_tokenizer import bytes_to_unicode

from tokenforge.decoding.api import Generation
from tokenforge.decoding.engine import TokenLogprob
from tokenforge.errors import TokenforgeError
from tokenforge.serve.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatLogprobs,
    ChatTokenLogprob,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    ErrorDetail,
    ErrorResponse,
    FinishReason,
    TopLogprob,
    Usage,
)

DONE = "data: [DONE]\n\n"
LOGPROB_FLOOR = -9999.0  # stands for -inf (a token top-k/top-p filtered out), as OpenAI and vLLM do
REPLACEMENT = "\ufffd"
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte tokens


@dataclass(frozen=True)
class ScoredToken:
    """A token of a response as clients see it, with its log-probability under the target."""

    text: str
    raw: bytes
    logprob: float | None  # None for the prompt's first token
    top: list[tuple[str, bytes, float]]  # the most likely tokens at its position, best first
    offset: int  # where it begins in the response text


@dataclass
class Result:
    """A finished generation and what its response adds: the echoed prompt, scored tokens."""

    generation: Generation
    prompt_text: str = ""  # with echo: the prompt, which the response text starts with
    logprobs: list[ScoredToken] | None = None  # the prompt's tokens (echo), then the new ones


class TokenRenderer:
    """Token ids to the strings, bytes and text offsets clients see. Not thread-safe: it is used
    by the engine thread only, as the tokenizer is."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self._byte_level = isinstance(decoder, decoders.ByteLevel)
        self._byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
        self._added = {i: t.content for i, t in getattr(tokenizer, "added_tokens_decoder",
                                                        {}).items()}
        self._cache: dict[int, tuple[str, bytes]] = {}

    def result(self, generation: Generation, prompt_ids: list[int], prompt_text: str) -> Result:
        """The Result of `generation`, with scored tokens when logprobs were asked for."""
        if generation.logprobs is None:
            return Result(generation, prompt_text)
        scored = []
        if generation.prompt_logprobs is not None:
            scored += self.scored(generation.prompt_logprobs, self.offsets(prompt_ids), 0,
                                  len(prompt_text))
        scored += self.scored(generation.logprobs, self.offsets(generation.token_ids),
                              len(prompt_text), len(prompt_text) + len(generation.text))
        return Result(generation, prompt_text, scored)

    def scored(self, logprobs: list[TokenLogprob], offsets: list[int], start: int,
               end: int) -> list[ScoredToken]:
        """Offsets are moved by `start` and clamped to `end` (a stop string can cut the text
        inside the last tokens)."""
        out = []
        for entry, offset in zip(logprobs, offsets, strict=True):
            text, raw = self.render(entry.token)
            top = [(*self.render(token), max(value, LOGPROB_FLOOR)) for token, value in entry.top]
            logprob = None if entry.logprob is None else max(entry.logprob, LOGPROB_FLOOR)
            out.append(ScoredToken(text, raw, logprob, top, min(start + offset, end)))
        return out

    def render(self, token: int) -> tuple[str, bytes]:
        """The token decoded alone, or `bytes:\\xNN...` when its bytes are not valid UTF-8."""
        if token not in self._cache:
            raw = self._bytes(token)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
            self._cache[token] = (text, raw)
        return self._cache[token]

    def offsets(self, ids: list[int]) -> list[int]:
        """Where each token begins in the decoded text of `ids` (a token that begins inside a
        character points at that character). Decoded incrementally, two short decodes a token."""
        offsets, length, prefix, read = [], 0, 0, 0
        for i in range(len(ids)):
            offsets.append(length)
            before = self._decode(ids[prefix:read])
            window = self._decode(ids[prefix:i + 1])
            if len(window) > len(before) and not window.endswith(REPLACEMENT):
                length += len(window) - len(before)
                prefix, read = read, i + 1
        return offsets

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

    def _bytes(self, token: int) -> bytes:
        if token in self._added:
            return self._added[token].encode()
        piece = self.tokenizer.convert_ids_to_tokens(token)
        if self._byte_level and piece is not None and all(c in self._byte_of for c in piece):
            return bytes(self._byte_of[c] for c in piece)
        fallback = _BYTE_FALLBACK.fullmatch(piece or "")
        if fallback:
            return bytes([int(fallback.group(1), 16)])
        return self.tokenizer.decode([token]).encode()


def sse(body: BaseModel) -> str:
    return f"data: {body.model_dump_json()}\n\n"


def finish_reason(generation: Generation) -> FinishReason:
    """The engine's eos/stop/length/context in OpenAI's two words; "guide" (the guide allowed
    no token next) as it is, a tokenforge extension."""
    reason = generation.stats.finish_reason
    if reason == "guide":
        return "guide"
    return "stop" if reason in ("eos", "stop") else "length"


def usage(results: list[Result]) -> Usage:
    """Token counts summed over the choices of a response."""
    prompt = sum(r.generation.stats.prompt_tokens for r in results)
    new = sum(r.generation.stats.new_tokens for r in results)
    forwards = sum(r.generation.stats.target_forwards for r in results)
    return Usage(prompt_tokens=prompt, completion_tokens=new, total_tokens=prompt + new,
                 mean_accepted_tokens=round(new / forwards, 4) if forwards else 0.0)


def completion_logprobs(tokens: list[ScoredToken]) -> CompletionLogprobs:
    """OpenAI's legacy shape: each position's top tokens and the chosen one, best first."""
    top = []
    for token in tokens:
        if token.logprob is None:
            top.append(None)
            continue
        alternatives = {text: value for text, _, value in token.top}
        alternatives.setdefault(token.text, token.logprob)
        top.append(dict(sorted(alternatives.items(), key=lambda item: -item[1])))
    return CompletionLogprobs(tokens=[t.text for t in tokens],
                              token_logprobs=[t.logprob for t in tokens], top_logprobs=top,
                              text_offset=[t.offset for t in tokens])


def chat_logprobs(tokens: list[ScoredToken]) -> ChatLogprobs:
    return ChatLogprobs(content=[ChatTokenLogprob(
        token=t.text, logprob=t.logprob, bytes=list(t.raw),
        top_logprobs=[TopLogprob(token=text, logprob=value, bytes=list(raw))
                      for text, raw, value in t.top]) for t in tokens])


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

    def full(self, results: list[Result]) -> Completion:
        return Completion(**self.meta, usage=usage(results), choices=[
            self._final_choice(result, index, result.prompt_text + result.generation.text)
            for index, result in enumerate(results)])

    def delta(self, text: str) -> Completion:
        return Completion(**self.meta, choices=[CompletionChoice(text=text)])

    def closing(self, result: Result) -> Completion:
        return Completion(**self.meta, choices=[self._final_choice(result, 0, "")])

    def usage_only(self, result: Result) -> Completion:
        return Completion(**self.meta, choices=[], usage=usage([result]))

    @staticmethod
    def _final_choice(result: Result, index: int, text: str) -> CompletionChoice:
        logprobs = None if result.logprobs is None else completion_logprobs(result.logprobs)
        return CompletionChoice(index=index, text=text, logprobs=logprobs,
                                finish_reason=finish_reason(result.generation),
                                token_ids=result.generation.token_ids)


class ChatFormat(_Format):
    prefix = "chatcmpl"

    def full(self, results: list[Result]) -> ChatCompletion:
        (result,) = results  # chat has one prompt
        return ChatCompletion(**self.meta, usage=usage(results), choices=[ChatChoice(
            message=AssistantMessage(content=result.generation.text),
            logprobs=self._logprobs(result), finish_reason=finish_reason(result.generation),
            token_ids=result.generation.token_ids)])

    def opening(self) -> list[BaseModel]:
        return [self._chunk(ChatDelta(role="assistant", content=""))]

    def delta(self, text: str) -> ChatCompletionChunk:
        return self._chunk(ChatDelta(content=text))

    def closing(self, result: Result) -> ChatCompletionChunk:
        return self._chunk(ChatDelta(), finish_reason=finish_reason(result.generation),
                           token_ids=result.generation.token_ids, logprobs=self._logprobs(result))

    def usage_only(self, result: Result) -> ChatCompletionChunk:
        return ChatCompletionChunk(**self.meta, choices=[], usage=usage([result]))

    def _chunk(self, delta: ChatDelta, **choice) -> ChatCompletionChunk:
        return ChatCompletionChunk(**self.meta, choices=[ChatChunkChoice(delta=delta, **choice)])

    @staticmethod
    def _logprobs(result: Result) -> ChatLogprobs | None:
        return None if result.logprobs is None else chat_logprobs(result.logprobs)


Format = CompletionFormat | ChatFormat


def error_response(status: int, message: str, kind: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=message, type=kind, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status)


def error_detail(err: Exception) -> ErrorDetail:
    if isinstance(err, TokenforgeError):
        return ErrorDetail(message=str(err), type="invalid_request_error")
    return ErrorDetail(message=f"the server failed on this request: {type(err).__name__}: {err}",
                       type="server_error")


def failure_response(err: Exception) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=error_detail(err)).model_dump(), status_code=400)
