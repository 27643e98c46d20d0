"""Fuzz the server with schemathesis from its own OpenAPI spec, in-process: no request may get a
5xx, a `server_error` body (an unexpected exception) or a response that breaks the spec."""

from __future__ import annotations

import pytest
import schemathesis
from conftest import tiny_model
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tokenforge.serve.app import ServeSettings, create_app

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def _app():
    loaded = tiny_model("llama")
    loaded.tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return create_app(loaded, ServeSettings(max_tokens_cap=8))


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@pytest.mark.timeout(60)
@schema.parametrize()
@settings(max_examples=30, deadline=2000, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_no_request_breaks_the_server(case):
    response = case.call()
    case.validate_response(response, checks=CHECKS)
    if response.headers.get("content-type", [""])[0].startswith("application/json"):
        body = response.json()
        failed = isinstance(body, dict) and body.get("error", {}).get("type") == "server_error"
        assert not failed, case.as_curl_command()
