"""Pure ASGI middleware: the API key check and the body size limit (both before the body is
read), and request counting with the status a client really got (499 when it left early)."""

from __future__ import annotations

import json
import logging
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenforge.serve.metrics import Metrics

PROTECTED_PREFIX = "/v1/"
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that went away before its response
CLIENT_CLOSED_STATE = "client_closed"  # request.state flag set by the service
access_log = logging.getLogger("uvicorn.access")


def mark_client_closed(scope: Scope) -> None:
    """Record that the client went away before its response was complete (counted as 499)."""
    scope.setdefault("state", {})[CLIENT_CLOSED_STATE] = True


class ApiKeyMiddleware:
    """`Authorization: Bearer KEY` on every /v1/ path; /health and /metrics stay open."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PROTECTED_PREFIX):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                await _send_error(send, 401, "missing or wrong API key: send the header "
                                  "'Authorization: Bearer <key>'", "authentication_error",
                                  "invalid_api_key", [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """A body over `max_bytes` gets a 413 before it is read: at once when Content-Length says so,
    else (a chunked body) as soon as the bytes read pass the limit. A body within the limit is
    read here and handed on whole, so the app never sees more than `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._too_large(send, f"is {declared} bytes")
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: the app sees it so
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._too_large(send, f"passed {self.max_bytes} bytes")
                return
            if not message.get("more_body", False):
                message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break
        await self.app(scope, _replay(message, receive), send)

    async def _too_large(self, send: Send, size: str) -> None:
        await _send_error(send, 413, f"the request body {size}, over this server's limit of "
                          f"{self.max_bytes} bytes ({self.max_bytes / 2**20:.1f} MiB); send a "
                          "shorter prompt, or start the server with a larger --max-body-bytes",
                          "invalid_request_error", "request_too_large")


def _replay(first: Message, receive: Receive) -> Receive:
    """`receive` that answers `first` once, then asks the server (for the disconnect)."""
    pending = [first]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def _content_length(scope: Scope) -> int | None:
    value = dict(scope["headers"]).get(b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


async def _send_error(send: Send, status: int, message: str, kind: str, code: str,
                      headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None,
                                 "code": code}}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *headers]})
    await send({"type": "http.response.body", "body": body})


class RequestCounterMiddleware:
    """Counts each request by path and final status once it ends; unknown paths share one label
    (bounded cardinality). A request whose client left before the end (the service calls
    `mark_client_closed`) counts as 499, even when a stream had already sent 200 headers, and
    gets a 499 line in uvicorn's access log: uvicorn logs a request when its headers go out (200
    for a stream) and not at all once the client is gone."""

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: set[str]):
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in self.paths else "other"
        state = scope.setdefault("state", {})
        sent: list[int] = []

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            status = CLIENT_CLOSED_REQUEST if state.get(CLIENT_CLOSED_STATE) else (
                sent[0] if sent else None)
            if status is not None:
                self.metrics.record_request(path, status)
            if status == CLIENT_CLOSED_REQUEST:
                _log_access(scope, status)


def _log_access(scope: Scope, status: int) -> None:
    """A line in uvicorn's access log format (uvicorn logs each request when its headers go out)."""
    client = scope.get("client")
    where = f"{client[0]}:{client[1]}" if client else "-"
    query = scope.get("query_string", b"").decode("latin-1")
    target = scope.get("path", "") + (f"?{query}" if query else "")
    access_log.info('%s - "%s %s HTTP/%s" %d', where, scope.get("method", ""), target,
                    scope.get("http_version", "1.1"), status)
