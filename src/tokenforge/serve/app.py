"""The FastAPI app: OpenAI-compatible completions and chat over one engine, plus health and metrics.

Every failure is an OpenAI-style error body: validation and engine errors are 400 (an unknown
or unsupported field is named), a missing or wrong key 401, an unknown model 404, a body over
the size limit 413, a full queue 429; nothing is a 500 (an unexpected exception is logged and
answered 400 with type `server_error`, which the fuzz test treats as a bug).
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException

from tokenforge import __version__
from tokenforge.errors import InvalidOptionError, TokenforgeError
from tokenforge.models.load import LoadedModel
from tokenforge.serve import metrics as prom
from tokenforge.serve.formats import (
    ChatFormat,
    CompletionFormat,
    error_response,
    failure_response,
)
from tokenforge.serve.middleware import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    RequestCounterMiddleware,
)
from tokenforge.serve.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
)
from tokenforge.serve.service import ServeSettings, Service, render_chat
from tokenforge.serve.worker import QueueFullError

log = logging.getLogger("tokenforge.serve")
ERROR_RESPONSES = {code: {"model": ErrorResponse, "description": what} for code, what in (
    (400, "invalid request"), (401, "missing or wrong API key"), (404, "unknown model"),
    (413, "request body over the size limit"), (429, "queue full"))}
SSE_EVENT = {"type": "object", "required": ["data"], "properties": {"data": {
    "type": "string", "description": "one chunk as JSON, or [DONE] after the last one"}}}
STREAM_RESPONSE = {200: {"content": {"text/event-stream": {"schema": SSE_EVENT}},
                         "description": "the response, or with stream=true its chunks as "
                                        "server-sent events ending with `data: [DONE]`"}}


def _validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    """The message of a validation error, and the field it names (OpenAI's `param`)."""
    parts, fields = [], []
    for item in err.errors()[:5]:
        if item["type"] == "json_invalid":
            return (f"the body is not valid JSON "
                    f"({item.get('ctx', {}).get('error', 'parse error')})"), None
        where = ".".join(str(p) for p in item["loc"] if p != "body")
        if not where:
            return ("the body must be a JSON object (sent with Content-Type: application/json), "
                    f"got: {item['msg']}"), None
        if item["type"] == "extra_forbidden":
            return (f"unknown field '{where}': tokenforge does not know it (a typo?); remove it "
                    "(docs/serve.md lists the fields this server takes)"), where
        parts.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
        fields.append(where)
    return "invalid request: " + "; ".join(parts), fields[0]


def create_app(loaded: LoadedModel, settings: ServeSettings | None = None,
               draft: LoadedModel | None = None) -> FastAPI:
    from tokenforge.dllm.model import is_dllm

    if is_dllm(loaded.model):
        raise InvalidOptionError(f"'{loaded.name}' is a masked-diffusion model; the server runs "
                                 "autoregressive models (diffusion models run with `tokenforge "
                                 "generate` and `tokenforge bench`)")
    settings = settings or ServeSettings()
    service = Service(loaded, draft, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        service.worker.start()
        yield
        service.worker.close()

    app = FastAPI(title="tokenforge", version=__version__, lifespan=lifespan,
                  strict_content_type=False,  # a body without Content-Type is read as JSON
                  summary="OpenAI-compatible completions over tokenforge's decoding engine")
    _add_error_handlers(app)

    @app.post("/v1/completions", response_model=Completion,
              responses={**STREAM_RESPONSE, **ERROR_RESPONSES})
    async def completions(body: CompletionRequest, request: Request):
        return await service.respond(request, body, body.prompts, CompletionFormat(loaded.name))

    @app.post("/v1/chat/completions", response_model=ChatCompletion,
              responses={**STREAM_RESPONSE, **ERROR_RESPONSES})
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        prompt = render_chat(loaded.tokenizer, body.messages)
        return await service.respond(request, body, [prompt], ChatFormat(loaded.name))

    started = int(time.time())

    @app.get("/v1/models", response_model=ModelList, responses={401: ERROR_RESPONSES[401]})
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=loaded.name, created=started,
                                         max_model_len=loaded.context_length)])

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        return Health(model=loaded.name, queue_depth=service.worker.queue_depth)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        text = service.metrics.render(service.worker.queue_depth, int(service.worker.busy))
        return PlainTextResponse(text, media_type=prom.CONTENT_TYPE)

    _document_400_not_422(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    paths = {route.path for route in app.routes}
    app.add_middleware(RequestCounterMiddleware, metrics=service.metrics, paths=paths)
    return app


def _document_400_not_422(app: FastAPI) -> None:
    """FastAPI documents its own 422 validation error; this server answers 400 instead."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema["paths"].values():
                for operation in operations.values():
                    operation["responses"].pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema["components"]["schemas"].pop(name, None)
        return app.openapi_schema

    app.openapi = openapi


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(err)
        return error_response(400, message, param=param)

    @app.exception_handler(TokenforgeError)
    async def engine_error(_: Request, err: TokenforgeError) -> JSONResponse:
        return failure_response(err)

    @app.exception_handler(QueueFullError)
    async def queue_full(_: Request, err: QueueFullError) -> JSONResponse:
        return error_response(429, str(err), "rate_limit_error")

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> JSONResponse:
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return error_response(err.status_code, str(err.detail), kind)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error while serving a request", exc_info=err)
        return failure_response(err)
