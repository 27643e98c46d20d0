"""`tokenforge serve` end to end: a live uvicorn server on loopback, the official `openai` client.

Covers completions, chat (a tiny model given a chat template), streaming, the `tokenforge` method
extension, validation errors, auth, the queue cap, client disconnects and /metrics.
"""

from __future__ import annotations

import logging
import threading
import time

import httpx
import openai
import pytest
from conftest import tiny_model

from tokenforge import generate
from tokenforge.serve.app import ServeSettings, create_app
from tokenforge.serve.live import serve_in_thread

pytestmark = pytest.mark.timeout(60)

CHAT_TEMPLATE = ("{% for m in messages %}w2 {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}w3{% endif %}")
PROMPT = "w5 w6 w7 w5 w6"
API_KEY = "test-key"


def chat_model():
    loaded = tiny_model("llama")
    loaded.tokenizer.chat_template = CHAT_TEMPLATE
    return loaded


def slow_model(delay_s: float = 0.01):
    """A tiny model whose every forward sleeps, so that a generation lasts long enough to cancel
    (the hook sits on the input embedding, which every backend's forward calls once)."""
    loaded = tiny_model("llama", seed=1)
    loaded.model.get_input_embeddings().register_forward_pre_hook(lambda *_: time.sleep(delay_s))
    return loaded


@pytest.fixture(scope="module")
def reference():
    """The same weights as the served model, for direct `generate` calls in the test thread."""
    return chat_model()


@pytest.fixture(scope="module")
def server():
    loaded = chat_model()
    with serve_in_thread(create_app(loaded, ServeSettings(max_tokens_cap=64))) as url:
        yield url, loaded.name


@pytest.fixture(scope="module")
def client(server):
    url, _ = server
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def model_name(server):
    return server[1]


def test_completion_matches_direct_generate(client, model_name, reference):
    result = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=12,
                                       temperature=0)
    expected = generate(reference, PROMPT, max_new_tokens=12)
    choice = result.choices[0]
    assert choice.text == expected.text
    assert choice.token_ids == expected.token_ids
    assert choice.finish_reason == "length"
    assert result.usage.prompt_tokens == 5
    assert result.usage.completion_tokens == 12
    assert result.usage.total_tokens == 17
    assert result.usage.mean_accepted_tokens == 1.0


@pytest.mark.parametrize(("method", "options"), [("pld", {"num_draft": 4}),
                                                 ("token-recycling", {"template": "narrow-24"})])
def test_method_extension_is_lossless_and_reported(client, model_name, reference, method, options):
    prompt = f"{PROMPT} {PROMPT} {PROMPT}"
    expected = generate(reference, prompt, max_new_tokens=20)
    for _ in range(2):  # the second request reuses the first one's drafter and its state
        result = client.completions.create(
            model=model_name, prompt=prompt, max_tokens=20, temperature=0,
            extra_body={"tokenforge": {"method": method, "options": options}})
        assert result.choices[0].token_ids == expected.token_ids
        assert result.usage.mean_accepted_tokens >= 1.0


def test_chat_uses_the_template(client, model_name, reference):
    messages = [{"role": "system", "content": "w9"}, {"role": "user", "content": "w5 w6"}]
    result = client.chat.completions.create(model=model_name, messages=messages, max_tokens=8,
                                            temperature=0)
    expected = generate(reference, "w2 w9 w2 w5 w6 w3", max_new_tokens=8)
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content == expected.text
    assert result.usage.prompt_tokens == 6


def test_streaming_equals_the_full_response(client, model_name):
    full = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=10,
                                     temperature=0)
    chunks = list(client.completions.create(model=model_name, prompt=PROMPT, max_tokens=10,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(final) == 1 and final[0].choices[0].token_ids == full.choices[0].token_ids
    assert chunks[-1].usage.completion_tokens == 10


def test_chat_streaming(client, model_name):
    messages = [{"role": "user", "content": "w5 w6"}]
    full = client.chat.completions.create(model=model_name, messages=messages, max_tokens=6,
                                          temperature=0)
    chunks = list(client.chat.completions.create(model=model_name, messages=messages,
                                                 max_tokens=6, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == full.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_raw_stream_is_openai_sse_ending_with_done(server):
    url, name = server
    body = {"model": name, "prompt": PROMPT, "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_stop_and_seeded_sampling(client, model_name):
    first = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=10,
                                      temperature=0)
    stop_word = first.choices[0].text.split()[2]
    stopped = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=10,
                                        temperature=0, stop=[stop_word])
    assert stop_word not in stopped.choices[0].text
    assert stopped.choices[0].finish_reason == "stop"
    draws = [client.completions.create(model=model_name, prompt=PROMPT, max_tokens=8,
                                       temperature=1.0, top_p=0.9, seed=7).choices[0].text
             for _ in range(2)]
    assert draws[0] == draws[1]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_tokens": 65}, "cap is 64"),
    ({"max_tokens": 0}, "only with echo"),
    ({"temperature": 3.0}, "temperature"),
    ({"logprobs": 21}, "logprobs"),
    ({"prompt": [PROMPT, PROMPT], "stream": True}, "stream: true takes one prompt"),
    ({"extra_body": {"tokenforge": {"method": "nope"}}}, "unknown method 'nope'"),
    ({"extra_body": {"tokenforge": {"method": "pld", "options": {"bogus": 1}}}}, "bogus"),
    ({"extra_body": {"max_tokens": "10"}}, "max_tokens"),
    ({"prompt": "w1 " * 600}, "context"),
    ({"prompt": ""}, "prompt"),
])
def test_invalid_requests_are_400(client, model_name, kwargs, message):
    kwargs = {"prompt": PROMPT, **kwargs}
    with pytest.raises(openai.BadRequestError, match=message):
        client.completions.create(model=model_name, **kwargs)


@pytest.mark.parametrize(("field", "value"), [
    ("n", 2), ("best_of", 3), ("presence_penalty", 0.5), ("frequency_penalty", -1.0),
    ("logit_bias", {"5": 10}), ("suffix", "w9")])
def test_unsupported_fields_are_400_unless_neutral(server, field, value):
    url, _ = server
    response = httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT, field: value})
    error = response.json()["error"]
    assert response.status_code == 400, error
    assert error["param"] == field
    assert f"{field}: not supported by tokenforge" in error["message"]
    assert "omit it or send null" in error["message"]


@pytest.mark.parametrize("body", [
    {"tools": [{"type": "function", "function": {"name": "f"}}]},
    {"modalities": ["text", "audio"]},
    {"logit_bias": {"5": 1}},
])
def test_unsupported_chat_fields_are_400(server, body):
    url, _ = server
    body = {"messages": [{"role": "user", "content": "w5"}], **body}
    response = httpx.post(f"{url}/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == next(iter(set(body) - {"messages"}))


def test_neutral_values_and_metadata_are_accepted(client, model_name):
    neutral = {"n": 1, "best_of": 1, "presence_penalty": 0, "frequency_penalty": 0.0,
               "logit_bias": {}, "suffix": None, "user": "someone", "extra_body": {
                   "metadata": {"team": "a"}, "store": False, "service_tier": "auto"}}
    result = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=2,
                                       temperature=0, **neutral)
    plain = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=2,
                                      temperature=0)
    assert result.choices[0].token_ids == plain.choices[0].token_ids
    chat = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "w5"}], max_tokens=2, n=1,
        tools=[], tool_choice="none", response_format={"type": "text"}, user="someone",
        metadata={"k": "v"}, store=False, parallel_tool_calls=False)
    assert chat.usage.completion_tokens == 2


@pytest.mark.parametrize(("body", "field"), [
    ({"not_a_field": [1]}, "not_a_field"),
    ({"max_token": 5}, "max_token"),  # a typo of max_tokens
    ({"tokenforge": {"method": "pld", "option": {}}}, "tokenforge.option"),
])
def test_unknown_fields_are_400_naming_them(server, body, field):
    url, _ = server
    response = httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT, **body})
    error = response.json()["error"]
    assert response.status_code == 400
    assert error["param"] == field
    assert error["message"].startswith(f"unknown field '{field}'")


def test_malformed_json_and_unknown_model(server):
    url, _ = server
    response = httpx.post(f"{url}/v1/completions", content=b'{"prompt": ',
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]
    response = httpx.post(f"{url}/v1/completions", json={"model": "gpt-9", "prompt": "w1"})
    assert response.status_code == 404 and "gpt-9" in response.json()["error"]["message"]


def test_chat_without_a_template_is_a_clear_400():
    with serve_in_thread(create_app(tiny_model("gpt2"))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="no chat template"):
            client.chat.completions.create(model="tiny-gpt2-0", max_tokens=2,
                                           messages=[{"role": "user", "content": "w5"}])


def test_models_and_health(client, server, model_name):
    assert [m.id for m in client.models.list()] == [model_name]
    health = httpx.get(f"{server[0]}/health").json()
    assert health["status"] == "ok" and health["model"] == model_name


def test_api_key():
    app = create_app(tiny_model("qwen2"), ServeSettings(api_key=API_KEY))
    with serve_in_thread(app) as url:
        bad = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="API key"):
            bad.completions.create(model="tiny-qwen2-0", prompt="w5", max_tokens=2)
        response = httpx.post(f"{url}/v1/completions", content=b"{not json")
        assert response.status_code == 401  # no key; checked before the body is read
        good = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
        assert good.completions.create(model="tiny-qwen2-0", prompt="w5",
                                       max_tokens=2).usage.completion_tokens == 2
        assert httpx.get(f"{url}/health").status_code == 200


def _metric(url: str, name: str) -> float:
    """The value of one sample (`name` includes its labels); 0 before a counter is first used."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def slow_server():
    """A slow engine and a queue of one: for disconnects and 429."""
    settings = ServeSettings(max_tokens_cap=400, max_queue=1)
    with serve_in_thread(create_app(slow_model(), settings)) as url:
        yield url


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def access_log():
    """The lines of uvicorn's access log (the servers here run with log_level warning)."""
    logger, handler = logging.getLogger("uvicorn.access"), _Lines()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


COMPLETIONS_499 = 'tokenforge_requests_total{path="/v1/completions",status="499"}'
COMPLETIONS_200 = 'tokenforge_requests_total{path="/v1/completions",status="200"}'


def test_disconnect_stops_the_generation_and_frees_the_engine(slow_server, access_log):
    url = slow_server
    closed, ok = _metric(url, COMPLETIONS_499), _metric(url, COMPLETIONS_200)
    body = {"prompt": PROMPT, "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body) as response:
        assert response.status_code == 200  # the headers went out before the client left
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")  # generating; now hang up mid-stream
    _wait_for(lambda: _metric(url, "tokenforge_generations_cancelled_total") == 1)
    _wait_for(lambda: _metric(url, "tokenforge_requests_running") == 0)
    _wait_for(lambda: _metric(url, COMPLETIONS_499) == closed + 1)
    assert _metric(url, COMPLETIONS_200) == ok  # counted as 499, not as the 200 it sent
    assert any(line.endswith('"POST /v1/completions HTTP/1.1" 499') for line in access_log)
    start = time.monotonic()
    quick = httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}).json()
    assert quick["usage"]["completion_tokens"] == 2
    assert time.monotonic() - start < 2.0  # 400 tokens would take about 4 s


def test_queue_cap_gives_429_and_a_leaving_client_frees_its_slot(slow_server, access_log):
    url = slow_server
    long_body = {"prompt": PROMPT, "max_tokens": 300, "temperature": 0, "stream": True}
    cancelled = _metric(url, "tokenforge_generations_cancelled_total")
    closed = _metric(url, COMPLETIONS_499)
    with httpx.stream("POST", f"{url}/v1/completions", json=long_body) as running:
        lines = running.iter_lines()  # keep a reference: a collected iterator closes the stream
        assert next(lines).startswith("data: ")
        waiting = threading.Thread(target=_post_and_give_up, args=(url, 0.5))
        waiting.start()
        _wait_for(lambda: _metric(url, "tokenforge_queue_depth") == 1)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.RateLimitError, match="queue is full"):
            client.completions.create(model="tiny-llama-1", prompt=PROMPT, max_tokens=2)
        waiting.join()
        _wait_for(lambda: _metric(url, "tokenforge_queue_depth") == 0)
    _wait_for(lambda: _metric(url, "tokenforge_generations_cancelled_total") == cancelled + 2)
    _wait_for(lambda: _metric(url, COMPLETIONS_499) == closed + 2)  # the waiting one and the stream
    assert sum(line.endswith('"POST /v1/completions HTTP/1.1" 499') for line in access_log) == 2
    assert _metric(url, 'tokenforge_requests_total{path="/v1/completions",status="429"}') == 1


def _post_and_give_up(url: str, timeout_s: float) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 2},
                   timeout=timeout_s)


def test_metrics(server, client, model_name):
    url, _ = server
    before = _metric(url, 'tokenforge_completion_tokens_total{method="vanilla"}')
    client.completions.create(model=model_name, prompt=PROMPT, max_tokens=5, temperature=0)
    text = httpx.get(f"{url}/metrics").text
    assert _metric(url, 'tokenforge_completion_tokens_total{method="vanilla"}') == before + 5
    assert _metric(url, 'tokenforge_mean_accepted_tokens{method="vanilla"}') == 1.0
    assert _metric(url, 'tokenforge_requests_total{path="/v1/completions",status="200"}') >= 1
    assert _metric(url, 'tokenforge_request_duration_seconds_bucket{le="+Inf"}') >= 1
    assert _metric(url, "tokenforge_queue_depth") == 0
    assert "# TYPE tokenforge_request_duration_seconds histogram" in text


def test_cli_binds_loopback_and_reads_the_key_from_the_environment(monkeypatch):
    import uvicorn
    from starlette.testclient import TestClient
    from typer.testing import CliRunner

    import tokenforge
    from tokenforge.cli import app as cli

    served = {}
    monkeypatch.setattr(tokenforge, "load_model", lambda spec, **_: tiny_model("llama"))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    result = CliRunner().invoke(cli, ["serve", "--method", "pld", "-o", "num_draft=3"],
                                env={"TOKENFORGE_API_KEY": API_KEY})
    assert result.exit_code == 0, result.output
    assert (served["host"], served["port"]) == ("127.0.0.1", 8000)
    with TestClient(served["app"]) as http:
        assert http.get("/v1/models").status_code == 401
        headers = {"Authorization": f"Bearer {API_KEY}"}
        assert http.get("/v1/models", headers=headers).json()["data"][0]["id"] == "tiny-llama-0"
