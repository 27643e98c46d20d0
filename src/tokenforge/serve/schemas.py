"""Request and response bodies of the OpenAI-compatible API, validated at the edge.

Requests are strict (a string where a number belongs is a 400, never coerced) and ignore fields they
do not know, so that any OpenAI client works; the `tokenforge` extension is ours and forbids unknown
keys, so that a typo there is an error rather than silently ignored.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

FinishReason = Literal["stop", "length"]
StopText = Annotated[str, Field(min_length=1)]
OptionValue = bool | int | float | str


class TokenforgeExtension(BaseModel):
    """`{"tokenforge": {"method": "pld", "options": {"num_draft": 8}}}` in the request body."""

    model_config = ConfigDict(strict=True, extra="forbid")

    method: str | None = Field(None, description="decoding method (see `tokenforge methods`); "
                                                 "default: the server's --method")
    options: dict[str, OptionValue] = Field(default_factory=dict,
                                            description="the method's own options")


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    include_usage: bool | None = None


class GenerationFields(BaseModel):
    """The fields that completions and chat completions share. `null` means the default."""

    model_config = ConfigDict(strict=True, extra="ignore")
    DEFAULT_MAX_TOKENS: ClassVar[int | None] = None  # None: the server's cap

    model: str | None = Field(None, description="the served model's id (see /v1/models)")
    max_tokens: int | None = Field(None, ge=1, description="new tokens at most, up to the cap")
    temperature: float | None = Field(None, ge=0, le=2, description="0 = greedy; default 1")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, description="0 = off (an extension, as in vLLM)")
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stop: StopText | Annotated[list[StopText], Field(max_length=4)] | None = None
    n: int | None = Field(None, description="only 1 is supported")
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    tokenforge: TokenforgeExtension | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n not in (None, 1):
            raise ValueError("tokenforge serves one choice per request: n must be 1")
        return n

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def wants_usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(GenerationFields):
    DEFAULT_MAX_TOKENS: ClassVar[int | None] = 16  # OpenAI's default for completions

    prompt: Annotated[str, Field(min_length=1)] | Annotated[list[int], Field(min_length=1)] = Field(
        description="the prompt text, or its token ids")


class ContentPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def as_template_input(self) -> dict[str, str]:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        return {"role": self.role, "content": content or ""}


class ChatCompletionRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="newer name of max_tokens")

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    mean_accepted_tokens: float = Field(description="new tokens per target forward (1.0 = plain)")


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None = None
    token_ids: list[int] | None = Field(None, description="all new token ids (final choice only)")


class Completion(BaseModel):
    """A completion, and also each streamed completion chunk (OpenAI uses one shape for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason
    token_ids: list[int]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: None = None
    finish_reason: FinishReason | None = None
    token_ids: list[int] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tokenforge"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    queue_depth: int


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
