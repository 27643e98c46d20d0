"""Request and response bodies of the OpenAI-compatible API, validated at the edge.

Requests are strict: a string where a number belongs is a 400, never coerced, and so is a field
this server does not know (a typo must not be silently ignored). OpenAI fields fall in three
groups: the ones tokenforge implements; metadata that cannot change the output (`user`,
`metadata`, ...), accepted and ignored; and features it does not implement (`best_of`,
`presence_penalty`, `tools`, ...), accepted only with their neutral value (the one that changes
nothing), else a 400 that names the field. The `tokenforge` extension is ours: the decoding
method, and guides (`guided_regex`, ...) beside OpenAI's `response_format`; `guide_spec()` turns
both into the request's GuideSpec.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from tokenforge.errors import GuideError
from tokenforge.guides import MONITORS, GuideSpec
from tokenforge.guides.grammar import schema_dict

T = TypeVar("T")
FinishReason = Literal["stop", "length", "guide"]  # "guide": a tokenforge extension
StopText = Annotated[str, Field(min_length=1)]
OptionValue = bool | int | float | str
PromptText = Annotated[str, Field(min_length=1)]
PromptIds = Annotated[list[int], Field(min_length=1)]
MAX_PROMPTS = 64  # prompts in one completions request (a batch, as lm-evaluation-harness sends)
MAX_LOGPROBS = 20  # the most alternatives per token OpenAI allows
PromptBatch = Annotated[list[T], Field(min_length=1, max_length=MAX_PROMPTS)]


def Unsupported(kind: Any, why: str, *neutral: object) -> Any:
    """An OpenAI field tokenforge does not implement: null or a neutral value (one that changes
    nothing) is accepted, anything else is a 400 that names the field."""
    allowed = " or ".join(json.dumps(v) for v in (None, *neutral))

    def neutral_only(value: object) -> object:
        if value is not None and value not in neutral:
            raise ValueError(f"not supported by tokenforge ({why}); omit it or send {allowed}")
        return value

    return Annotated[kind | None, AfterValidator(neutral_only),
                     Field(description=f"not supported ({why}); accepted only as {allowed}")]


Metadata = Annotated[Any, Field(description="metadata: accepted and ignored")]
PENALTIES = "penalties are not implemented"


class TokenforgeExtension(BaseModel):
    """`{"tokenforge": {"method": "pld", "options": {"num_draft": 8}}}` in the request body, and
    the guides, named as vLLM names its guided-decoding fields where it has one."""

    model_config = ConfigDict(strict=True, extra="forbid")

    method: str | None = Field(None, description="decoding method (see `tokenforge methods`); "
                                                 "default: the server's --method")
    options: dict[str, OptionValue] = Field(default_factory=dict,
                                            description="the method's own options")
    guided_json: dict[str, Any] | str | None = Field(
        None, description="output matches this JSON schema (an object, or its JSON text)")
    guided_regex: str | None = Field(None, min_length=1,
                                     description="output matches this regular expression")
    guided_grammar: str | None = Field(None, min_length=1,
                                       description="output matches this Lark grammar "
                                                   "(llguidance's dialect)")
    guided_monitor: Literal[MONITORS] | None = Field(
        None, description="monitor-guided decoding: 'python' allows only the members of "
                          "an object after `obj.`")
    repilot: bool | None = Field(None, description="Repilot-style completion engine")
    deny_vulnerabilities: bool | None = Field(None, description="vulnerability-constrained "
                                                                "decoding")

    @field_validator("guided_json")
    @classmethod
    def _json_text_is_an_object(cls, value: dict | str | None) -> dict | None:
        if value is None:
            return None
        try:
            return schema_dict(value)
        except GuideError as err:
            raise ValueError(str(err)) from None


class JsonSchemaFormat(BaseModel):
    """OpenAI's `response_format.json_schema`."""

    model_config = ConfigDict(strict=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema", description="the JSON schema output follows")
    strict: bool | None = Field(None, description="accepted; the schema is always enforced")


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: text (no guide), any JSON object, or JSON following a schema."""

    model_config = ConfigDict(strict=True, extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = Field(None, description="with type json_schema only")

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type 'json_schema', and only there")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    include_usage: bool | None = None


class GenerationFields(BaseModel):
    """The fields that completions and chat completions share. `null` means the default."""

    model_config = ConfigDict(strict=True, extra="forbid")
    DEFAULT_MAX_TOKENS: ClassVar[int | None] = None  # None: the server's cap

    model: str | None = Field(None, description="the served model's id (see /v1/models)")
    max_tokens: int | None = Field(None, ge=0, description="new tokens at most, up to the cap "
                                                           "(0 only with echo)")
    temperature: float | None = Field(None, ge=0, le=2, description="0 = greedy; default 1")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, description="0 = off (an extension, as in vLLM)")
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stop: StopText | Annotated[list[StopText], Field(max_length=4)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    tokenforge: TokenforgeExtension | None = None

    n: Unsupported(int, "it serves one choice per request", 1) = None
    presence_penalty: Unsupported(float, PENALTIES, 0) = None
    frequency_penalty: Unsupported(float, PENALTIES, 0) = None
    logit_bias: Unsupported(dict[str, float], "logit bias is not implemented", {}) = None

    user: Metadata = None
    metadata: Metadata = None
    store: Metadata = None
    service_tier: Metadata = None
    prompt_cache_key: Metadata = None
    safety_identifier: Metadata = None

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def guide_spec(self) -> GuideSpec:
        """The guide asked for by `response_format` and the `tokenforge` extension (GuideError
        when they ask for more than one grammar)."""
        ext = self.tokenforge or TokenforgeExtension()
        kind = self.response_format.type if self.response_format else "text"
        grammars = [name for name, given in (
            (f"response_format {kind}", kind != "text"),
            ("tokenforge.guided_json", ext.guided_json is not None),
            ("tokenforge.guided_regex", ext.guided_regex is not None),
            ("tokenforge.guided_grammar", ext.guided_grammar is not None)) if given]
        if len(grammars) > 1:
            raise GuideError(f"{' and '.join(grammars)} each ask for a grammar; send one of them")
        schema = self.response_format.json_schema.schema_ if kind == "json_schema" else (
            ext.guided_json)
        return GuideSpec(json_schema=schema, json_object=kind == "json_object",
                         regex=ext.guided_regex, lark=ext.guided_grammar,
                         monitor=ext.guided_monitor, repilot=bool(ext.repilot),
                         deny_vulnerabilities=bool(ext.deny_vulnerabilities))

    @property
    def logprobs_count(self) -> int | None:
        """How many alternatives to report per token; None: no logprobs."""
        return None

    @property
    def echoes(self) -> bool:
        return False

    @property
    def wants_usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(GenerationFields):
    DEFAULT_MAX_TOKENS: ClassVar[int | None] = 16  # OpenAI's default for completions

    prompt: PromptText | PromptIds | PromptBatch[PromptText] | PromptBatch[PromptIds] = Field(
        description="the prompt text or its token ids; or a list of them (one choice each)")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS,
                                 description="log-probabilities of the tokens, with this many "
                                             "most likely alternatives each")
    echo: bool | None = Field(None, description="the prompt comes first in text and logprobs")
    best_of: Unsupported(int, "it draws one sample per request", 1) = None
    suffix: Unsupported(str, "insertion is not implemented") = None

    @property
    def prompts(self) -> list[str | list[int]]:
        """The prompts as a list: one choice each."""
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            return [self.prompt]
        return list(self.prompt)

    @property
    def logprobs_count(self) -> int | None:
        return self.logprobs

    @property
    def echoes(self) -> bool:
        return bool(self.echo)


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


TOOLS = "tools and function calling are not implemented"


class ChatCompletionRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="newer name of max_tokens")
    logprobs: bool | None = Field(None, description="log-probabilities of the new tokens")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS,
                                     description="most likely alternatives per token "
                                                 "(needs logprobs: true)")
    tools: Unsupported(list, TOOLS, []) = None
    tool_choice: Unsupported(str | dict, TOOLS, "none", "auto") = None
    parallel_tool_calls: bool | None = Field(None, description="accepted and ignored: it changes "
                                                               "nothing without tools")
    functions: Unsupported(list, TOOLS, []) = None
    function_call: Unsupported(str | dict, TOOLS, "none", "auto") = None
    modalities: Unsupported(list[str], "text is the only modality", ["text"]) = None
    audio: Unsupported(dict, "text is the only modality") = None
    prediction: Unsupported(dict, "predicted outputs are not implemented") = None
    reasoning_effort: Unsupported(str, "this is not a reasoning model") = None
    verbosity: Unsupported(str, "verbosity is not implemented") = None
    web_search_options: Unsupported(dict, "web search is not implemented") = None

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, top: int | None, info) -> int | None:
        if top is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return top

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else (
            self.max_tokens)

    @property
    def logprobs_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    mean_accepted_tokens: float = Field(description="new tokens per target forward (1.0 = plain)")


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy completions logprobs: one entry per token in each list."""

    tokens: list[str]
    token_logprobs: list[float | None] = Field(description="null for the prompt's first token")
    top_logprobs: list[dict[str, float] | None] = Field(
        description="the most likely tokens at each position, and the chosen one")
    text_offset: list[int] = Field(description="where each token begins in `text`")


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
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


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] = Field(description="the token's bytes (UTF-8 text, or a piece of a character)")


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
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
    logprobs: ChatLogprobs | None = None
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
