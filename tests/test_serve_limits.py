"""Server limits: a body over --max-body-bytes is a 413 before it is read (memory stays at its
baseline, other requests do not wait), a prompt over --max-prompt-tokens is a 400 that says the
limit, and the settings themselves are checked."""

from __future__ import annotations

import gc
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import tiny_model

from tokenforge.errors import InvalidOptionError
from tokenforge.serve.app import ServeSettings, create_app
from tokenforge.serve.live import serve_in_thread

pytestmark = pytest.mark.timeout(60)

HUGE_BYTES = 20_000_000
CHUNK = 1 << 16
RSS_MARGIN = 32 << 20  # it grew by 2.4 GB (of 3.1) when the server read and tokenized the body
UPLOADS = ["content-length", "chunked"]
PROMPT = "w5 w6 w7 w5 w6"


def rss_bytes() -> int:
    """This process's resident memory (the in-process server included), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def huge_body() -> bytes:
    return json.dumps({"prompt": "w5 " * (HUGE_BYTES // 3), "max_tokens": 1}).encode()


def chunks(body: bytes, pause_s: float = 0.0):
    """`body` piece by piece (so that the client holds no copy of it), optionally slowed down."""
    for start in range(0, len(body), CHUNK):
        time.sleep(pause_s)
        yield body[start:start + CHUNK]


def upload(body: bytes, how: str, pause_s: float = 0.0) -> dict:
    """httpx arguments that send `body` with a Content-Length header, or chunked without one."""
    headers = {"content-type": "application/json"}
    if how == "content-length":
        headers["content-length"] = str(len(body))
    return {"content": chunks(body, pause_s), "headers": headers}


@pytest.fixture(scope="module")
def server():
    app = create_app(tiny_model("llama"), ServeSettings(max_tokens_cap=8, max_prompt_tokens=16))
    with serve_in_thread(app) as url:
        yield url


def post_completion(url: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", timeout=30, **kwargs)


@pytest.mark.parametrize("how", UPLOADS)
def test_a_huge_body_is_413_fast_and_memory_returns_to_baseline(server, how):
    post_completion(server, json={"prompt": PROMPT, "max_tokens": 1})  # warm up both sides
    body = huge_body()
    gc.collect()
    baseline = rss_bytes()
    start = time.monotonic()
    response = post_completion(server, **upload(body, how))
    elapsed = time.monotonic() - start
    gc.collect()
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "request_too_large"
    assert "limit of 4194304 bytes (4.0 MiB)" in error["message"]
    assert "--max-body-bytes" in error["message"]
    assert elapsed < 2.0  # it took 27.5 s when the body was read, parsed and tokenized
    assert rss_bytes() - baseline < RSS_MARGIN
    metrics = httpx.get(f"{server}/metrics").text
    assert 'tokenforge_requests_total{path="/v1/completions",status="413"}' in metrics


@pytest.mark.parametrize("how", UPLOADS)
def test_a_small_request_does_not_wait_for_a_huge_one(server, how):
    # an upload that lasts about 0.6 s, rejected after its first 4 MiB (or at once)
    statuses = []
    huge = threading.Thread(target=lambda: statuses.append(post_completion(
        server, **upload(huge_body(), how, pause_s=0.002)).status_code))
    huge.start()
    time.sleep(0.1)  # the huge upload is under way
    start = time.monotonic()
    small = post_completion(server, json={"prompt": PROMPT, "max_tokens": 2})
    assert small.status_code == 200
    assert time.monotonic() - start < 1.0
    huge.join()
    assert statuses == [413]


def test_a_body_within_the_limit_is_served(server):
    padded = json.dumps({"prompt": PROMPT, "max_tokens": 2, "user": "x" * 1_000_000})
    response = post_completion(server, **upload(padded.encode(), "chunked"))
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("prompt", [" ".join(["w5"] * 17), [5] * 17])
def test_a_prompt_over_max_prompt_tokens_is_400_naming_the_limit(server, prompt):
    response = post_completion(server, json={"prompt": prompt, "max_tokens": 1})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "the prompt has 17 tokens but this server accepts at most 16 (max_prompt_tokens); "
        "shorten the prompt")
    at_limit = prompt[:-3] if isinstance(prompt, str) else prompt[:-1]
    assert post_completion(server, json={"prompt": at_limit, "max_tokens": 1}).status_code == 200


def test_the_prompt_limit_defaults_to_the_models_context():
    app = create_app(tiny_model("llama"), ServeSettings(max_body_bytes=1 << 20))
    with serve_in_thread(app) as url:
        response = post_completion(url, json={"prompt": [5] * 513, "max_tokens": 1})
        assert response.status_code == 400
        assert "accepts at most 512" in response.json()["error"]["message"]


@pytest.mark.parametrize("name", ["max_body_bytes", "max_prompt_tokens", "max_tokens_cap"])
def test_settings_must_be_positive(name):
    with pytest.raises(InvalidOptionError, match=f"{name} must be a positive integer, got 0"):
        ServeSettings(**{name: 0})
