"""Guided decoding through the server: OpenAI's `response_format` and the `tokenforge` guide fields.

Grammars run on the demo model (byte-level BPE, which llguidance can read; greedy, it writes
Python, never JSON, unless guided). `finish_reason: "guide"` is checked on the tiny chat model with
a guide that allows a fixed sequence of words and then nothing, put in place of `make_guide`.
"""

from __future__ import annotations

import json
import re

import httpx
import openai
import pydantic
import pytest
import torch
from conftest import tiny_model
from test_serve import CHAT_TEMPLATE, PROMPT

from tokenforge.guides import Guide, GuideSpec, make_guide
from tokenforge.models.load import load_model
from tokenforge.serve import worker
from tokenforge.serve.app import ServeSettings, create_app
from tokenforge.serve.live import serve_in_thread

pytestmark = pytest.mark.timeout(60)

DEMO_TEMPLATE = "{% for m in messages %}# {{ m['content'] }}\n{% endfor %}"
USER_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12},
                   "admin": {"type": "boolean"},
                   "role": {"enum": ["reader", "writer"]}},
    "required": ["name", "admin", "role"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def loaded():
    model = load_model("demo", device="cpu")
    model.tokenizer.chat_template = DEMO_TEMPLATE
    return model


@pytest.fixture(scope="module")
def url(loaded):
    with serve_in_thread(create_app(loaded, ServeSettings(max_tokens_cap=128))) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def _post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/{path}", json={"temperature": 0, **body}, timeout=30)


def _takes_every_token(loaded, spec: GuideSpec, prompt: str, token_ids: list[int]) -> bool:
    """Whether a fresh guide for `spec`, begun after `prompt`, consumes all of `token_ids`."""
    guide = make_guide(loaded, spec)
    prompt_ids = loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    guide.begin(prompt_ids, loaded.model.get_output_embeddings().weight.shape[0])
    return guide.accepts(token_ids) == len(token_ids)


def _check_user(value: dict) -> None:
    assert set(value) == {"name", "admin", "role"}
    assert isinstance(value["name"], str) and len(value["name"]) <= 12
    assert isinstance(value["admin"], bool) and value["role"] in ("reader", "writer")


def test_unguided_demo_does_not_write_json(client):
    text = client.completions.create(model="demo", prompt="config = ", max_tokens=48,
                                     temperature=0).choices[0].text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_json_object(client, loaded):
    prompt = "config = "
    result = client.completions.create(model="demo", prompt=prompt, max_tokens=128, temperature=0,
                                       extra_body={"response_format": {"type": "json_object"}})
    choice = result.choices[0]
    assert choice.finish_reason == "stop", choice.text
    assert isinstance(json.loads(choice.text), dict)
    assert _takes_every_token(loaded, GuideSpec(json_object=True), prompt, choice.token_ids)


def test_json_schema_chat_and_stream(client, loaded):
    messages = [{"role": "user", "content": "the user record"}]
    response_format = {"type": "json_schema",
                       "json_schema": {"name": "user", "schema": USER_SCHEMA, "strict": True}}
    full = client.chat.completions.create(model="demo", messages=messages, max_tokens=96,
                                          temperature=0, response_format=response_format)
    choice = full.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    _check_user(json.loads(choice.message.content))
    chunks = list(client.chat.completions.create(
        model="demo", messages=messages, max_tokens=96, temperature=0, stream=True,
        response_format=response_format))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice.message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    prompt = "# the user record\n"
    assert _takes_every_token(loaded, GuideSpec(json_schema=USER_SCHEMA), prompt,
                              choice.token_ids)


class User(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=12)
    admin: bool


def test_openai_client_parse_with_a_pydantic_model(client):
    result = client.chat.completions.parse(
        model="demo", messages=[{"role": "user", "content": "a user"}], max_tokens=96,
        temperature=0, response_format=User)
    parsed = result.choices[0].message.parsed
    assert isinstance(parsed, User) and len(parsed.name) <= 12


def test_guided_json_as_text_and_with_a_speculative_method(url):
    body = {"prompt": "user = ", "max_tokens": 96,
            "tokenforge": {"guided_json": json.dumps(USER_SCHEMA)}}
    plain = _post(url, "completions", body).json()["choices"][0]
    _check_user(json.loads(plain["text"]))
    body["tokenforge"].update(method="pld", options={"num_draft": 4})
    assert _post(url, "completions", body).json()["choices"][0]["token_ids"] == plain["token_ids"]


REGEX = r"v[0-9]\.[0-9]{1,2}-(alpha|beta)"


def test_regex_full_stream_and_batch(url, client):
    extra = {"tokenforge": {"guided_regex": REGEX}}
    full = client.completions.create(model="demo", prompt="version = ", max_tokens=32,
                                     temperature=0, extra_body=extra).choices[0]
    assert re.fullmatch(REGEX, full.text) and full.finish_reason == "stop"
    chunks = list(client.completions.create(model="demo", prompt="version = ", max_tokens=32,
                                            temperature=0, stream=True, extra_body=extra))
    assert "".join(c.choices[0].text for c in chunks) == full.text
    assert chunks[-1].choices[0].finish_reason == "stop"
    batch = client.completions.create(model="demo", prompt=["x = ", "def f():"], max_tokens=32,
                                      temperature=0.8, seed=3, extra_body=extra)
    assert [c.index for c in batch.choices] == [0, 1]
    assert all(re.fullmatch(REGEX, c.text) for c in batch.choices)


def test_lark_grammar(url):
    grammar = 'start: "import " NAME ("." NAME)?\nNAME: /[a-z]{1,8}/'
    choice = _post(url, "completions", {"prompt": "# modules\n", "max_tokens": 24,
                                        "tokenforge": {"guided_grammar": grammar}}
                   ).json()["choices"][0]
    assert re.fullmatch(r"import [a-z]{1,8}(\.[a-z]{1,8})?", choice["text"]), choice


def test_echo_and_logprobs_under_a_guide(url):
    body = {"prompt": "n = ", "max_tokens": 8, "logprobs": 3, "echo": True,
            "tokenforge": {"guided_regex": "[0-9]{3}"}}
    choice = _post(url, "completions", body).json()["choices"][0]
    assert choice["text"].startswith("n = ") and re.fullmatch("[0-9]{3}", choice["text"][4:])
    logprobs = choice["logprobs"]
    new = len(choice["token_ids"])
    for token, top in zip(logprobs["tokens"][-new:], logprobs["top_logprobs"][-new:]):
        assert token in top  # alternatives come from the guided distribution: digits only
        assert all(re.fullmatch("[0-9]+", alt) or alt == "<|endoftext|>" for alt in top), top
    # echo with max_tokens 0 only scores the prompt: the guide changes nothing there
    scored = {"prompt": "n = ", "max_tokens": 0, "logprobs": 2, "echo": True}
    plain = _post(url, "completions", scored).json()["choices"][0]
    guided = _post(url, "completions", {**scored, "tokenforge": {"guided_regex": "[0-9]{3}"}}
                   ).json()["choices"][0]
    assert guided == plain and guided["text"] == "n = "


@pytest.mark.parametrize(("tokenforge", "quoted"), [
    ({"guided_grammar": "start: foo"}, 'unknown name: "foo"'),
    ({"guided_regex": "v(1"}, "unclosed group"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_a_bad_grammar_is_a_400_quoting_the_library(url, tokenforge, quoted, stream):
    response = _post(url, "completions", {"prompt": "x = ", "max_tokens": 4, "stream": stream,
                                          "tokenforge": tokenforge})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert quoted in error["message"] and error["type"] == "invalid_request_error"


def test_a_bad_grammar_is_a_400_even_when_nothing_is_generated(url):
    response = _post(url, "completions", {"prompt": "x = ", "max_tokens": 0, "echo": True,
                                          "tokenforge": {"guided_regex": "v(1"}})
    assert response.status_code == 400 and "unclosed group" in response.json()["error"]["message"]


@pytest.mark.parametrize(("body", "param", "message"), [
    ({"tokenforge": {"guided_jsn": {}}}, "tokenforge.guided_jsn", "unknown field"),
    ({"tokenforge": {"guided_monitor": "java"}}, "tokenforge.guided_monitor", "'python'"),
    ({"tokenforge": {"guided_json": "{not json"}}, "tokenforge.guided_json", "not valid JSON"),
    ({"tokenforge": {"repilot": "yes"}}, "tokenforge.repilot", "valid boolean"),
    ({"response_format": {"type": "xml"}}, "response_format.type", "'json_schema'"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema is required"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "u", "schema": {},
                                                                 "strict": True, "x": 1}}},
     "response_format.json_schema.x", "unknown field"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
     "response_format.json_schema.name", "Field required"),
])
def test_bad_guide_fields_are_400_naming_them(url, body, param, message):
    response = _post(url, "chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                               **body})
    error = response.json()["error"]
    assert response.status_code == 400, error
    assert error["param"] == param and message in error["message"], error


def test_two_grammars_are_a_400(url):
    response = _post(url, "completions", {"prompt": "x", "response_format": {"type": "json_object"},
                                          "tokenforge": {"guided_regex": "[0-9]+"}})
    assert response.status_code == 400
    assert ("response_format json_object and tokenforge.guided_regex each ask for a grammar"
            in response.json()["error"]["message"])


MEMBER_PROMPT = "import string\n\n\ndef main():\n    return string."


def test_member_monitor_and_repilot(client):
    import string

    def first_name(extra: dict | None) -> str:
        text = client.completions.create(model="demo", prompt=MEMBER_PROMPT, max_tokens=6,
                                         temperature=0, extra_body=extra).choices[0].text
        return re.match(r"\w*", text).group()

    assert first_name(None) not in dir(string)  # unguided, the demo model makes a member up
    monitored = first_name({"tokenforge": {"guided_monitor": "python"}})
    assert monitored and any(name.startswith(monitored) for name in dir(string))
    assert first_name({"tokenforge": {"repilot": True}}) in dir(string)  # completed at once


def test_guides_that_cannot_apply_are_a_400(url):
    response = _post(url, "completions", {"prompt": "x = ", "max_tokens": 4,
                                          "tokenforge": {"deny_vulnerabilities": True}})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "vulnerability labels" in message and "train-vuln" in message
    loaded = tiny_model("llama")  # a word-level tokenizer, which llguidance cannot read
    with serve_in_thread(create_app(loaded)) as tiny_url:
        response = _post(tiny_url, "completions", {"prompt": PROMPT, "max_tokens": 4,
                                                   "response_format": {"type": "json_object"}})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "llguidance" in error["message"] and "tokenizer" in error["message"]
    assert error["type"] == "invalid_request_error"


def test_text_response_format_changes_nothing(client):
    plain = client.completions.create(model="demo", prompt="x = ", max_tokens=6, temperature=0)
    text = client.completions.create(model="demo", prompt="x = ", max_tokens=6, temperature=0,
                                     extra_body={"response_format": {"type": "text"}})
    assert text.choices[0].token_ids == plain.choices[0].token_ids


class Words(Guide):
    """Allows the given tokens in turn, then none at all (not even EOS)."""

    name = "words"

    def __init__(self, tokens: list[int]):
        self.tokens = tokens

    def begin(self, prompt_ids: list[int], vocab_size: int) -> None:
        super().begin(prompt_ids, vocab_size)
        self.position = 0

    def allowed(self) -> torch.Tensor:
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        if self.position < len(self.tokens):
            mask[self.tokens[self.position]] = True
        return mask

    def consume(self, token: int) -> bool:
        if self.position < len(self.tokens) and token == self.tokens[self.position]:
            self.position += 1
            return True
        return False

    def rollback(self, k: int) -> None:
        self.position -= k


@pytest.fixture
def words_server(monkeypatch):
    """The tiny chat model, where `guided_regex: "w7 w8"` builds Words([7, 8]) (and "none",
    Words([]))."""
    loaded = tiny_model("llama")
    loaded.tokenizer.chat_template = CHAT_TEMPLATE
    monkeypatch.setattr(worker, "make_guide", lambda model, spec: Words(
        [int(word[1:]) for word in spec.regex.split() if word.startswith("w")]))
    with serve_in_thread(create_app(loaded, ServeSettings(max_tokens_cap=64))) as base:
        yield base


@pytest.mark.parametrize("method", ["vanilla", "pld"])
def test_finish_reason_guide(words_server, method):
    guided = {"tokenforge": {"guided_regex": "w7 w8 w9", "method": method}, "max_tokens": 20}
    completion = _post(words_server, "completions", {"prompt": PROMPT, **guided}).json()
    choice = completion["choices"][0]
    assert (choice["finish_reason"], choice["token_ids"]) == ("guide", [7, 8, 9])
    assert choice["text"].split() == ["w7", "w8", "w9"]
    assert completion["usage"]["completion_tokens"] == 3
    chat = _post(words_server, "chat/completions",
                 {"messages": [{"role": "user", "content": "w5"}], **guided}).json()
    assert chat["choices"][0]["finish_reason"] == "guide"
    assert chat["choices"][0]["message"]["content"].split() == ["w7", "w8", "w9"]
    client = openai.OpenAI(base_url=f"{words_server}/v1", api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(
        model="tiny-llama-0", messages=[{"role": "user", "content": "w5"}], stream=True,
        temperature=0, max_tokens=20, extra_body={"tokenforge": guided["tokenforge"]}))
    assert chunks[-1].choices[0].finish_reason == "guide"
    assert chunks[-1].choices[0].token_ids == [7, 8, 9]
    nothing = _post(words_server, "completions", {
        "prompt": PROMPT, "max_tokens": 5, "tokenforge": {"guided_regex": "none"}}).json()
    assert nothing["choices"][0]["finish_reason"] == "guide"
    assert nothing["choices"][0]["token_ids"] == [] and nothing["choices"][0]["text"] == ""
