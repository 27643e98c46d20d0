"""Log-probabilities, echo and seeds over HTTP, as OpenAI (legacy completions and chat) and vLLM
define them: a request's logprobs equal `generate(..., logprobs=N)`, whichever method runs;
echo with max_tokens=0 scores the prompt (lm-evaluation-harness's loglikelihood request); a seed
reproduces its sample with any method; after a stop string every registered method returns
vanilla's tokens and counts them in `usage`."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import torch
from conftest import tiny_model
from transformers import AutoTokenizer

from tokenforge import generate
from tokenforge.decoding.registry import all_methods
from tokenforge.models.load import DEMO_DIR
from tokenforge.serve.app import ServeSettings, create_app
from tokenforge.serve.formats import TokenRenderer
from tokenforge.serve.live import serve_in_thread

pytestmark = pytest.mark.timeout(60)

CHAT_TEMPLATE = ("{% for m in messages %}w2 {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}w3{% endif %}")
PROMPT = "w20 w21 w22 w23 w20 w21 w22 w23"  # drafters find matches: pld and TR accept drafts
SEED = 9  # a seed whose temperature-1 sample is 24 tokens long and accepts drafts
SAMPLINGS = {"greedy": {"temperature": 0}, "seeded": {"temperature": 1.0, "seed": SEED}}
METHODS = {"vanilla": {}, "pld": {}, "token-recycling": {"tree_size": 80}}
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


def served_model():
    loaded = tiny_model("llama")
    loaded.tokenizer.chat_template = CHAT_TEMPLATE
    return loaded


@pytest.fixture(scope="module")
def reference():
    """The served weights, for direct `generate` calls in the test thread."""
    return served_model()


@pytest.fixture(scope="module")
def server():
    """The CLI's default method (token-recycling, default options) and a draft model of the same
    vocabulary, so that every registered method can run."""
    draft = tiny_model("llama", seed=3, layers=1)
    settings = ServeSettings(method="token-recycling", max_tokens_cap=64)
    with serve_in_thread(create_app(served_model(), settings, draft=draft)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


def complete(url: str, **body) -> dict:
    response = httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT, **body}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def with_method(method: str) -> dict:
    return {"tokenforge": {"method": method, "options": METHODS.get(method, {})}}


def assert_matches_engine(logprobs: dict, expected, reference, top_n: int) -> None:
    """`logprobs` (the response's) against the engine's TokenLogprob list, token by token."""
    tokens = [reference.tokenizer.decode([e.token]) for e in expected]
    assert logprobs["tokens"] == tokens
    torch.testing.assert_close(logprobs["token_logprobs"], [e.logprob for e in expected],
                               **TOLERANCE)
    for top, entry, token in zip(logprobs["top_logprobs"], expected, tokens, strict=True):
        alternatives = {reference.tokenizer.decode([t]): v for t, v in entry.top}
        assert len(alternatives) == top_n
        assert len(top) == top_n + (token not in alternatives)  # and the chosen token
        torch.testing.assert_close(top, {**alternatives, token: entry.logprob}, **TOLERANCE)


def assert_offsets(text: str, logprobs: dict) -> None:
    """Each token's text starts at its offset (the word tokenizer puts a space between words)."""
    offsets = logprobs["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets)
    pieces = [text[a:b] for a, b in zip(offsets, [*offsets[1:], None])]
    assert [p.strip() for p in pieces] == logprobs["tokens"]


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_completion_logprobs_equal_generate(server, reference, sampling):
    body = complete(server, max_tokens=12, logprobs=3, **SAMPLINGS[sampling],
                    **with_method("vanilla"))
    expected = generate(reference, PROMPT, max_new_tokens=12, logprobs=3, **SAMPLINGS[sampling])
    choice = body["choices"][0]
    assert choice["token_ids"] == expected.token_ids and choice["text"] == expected.text
    assert_matches_engine(choice["logprobs"], expected.logprobs, reference, top_n=3)
    assert_offsets(choice["text"], choice["logprobs"])


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_logprobs_are_identical_whichever_method_runs(server, sampling):
    runs = {method: complete(server, max_tokens=24, logprobs=4, **SAMPLINGS[sampling],
                             **with_method(method)) for method in METHODS}
    assert runs["token-recycling"]["usage"]["mean_accepted_tokens"] > 1  # drafts were accepted
    vanilla = runs.pop("vanilla")["choices"][0]
    for method, body in runs.items():
        choice = body["choices"][0]
        assert choice["token_ids"] == vanilla["token_ids"], method
        assert choice["logprobs"]["tokens"] == vanilla["logprobs"]["tokens"]
        for key in ("token_logprobs", "top_logprobs"):
            torch.testing.assert_close(choice["logprobs"][key], vanilla["logprobs"][key],
                                       **TOLERANCE)


def test_top_lists_are_sorted_hold_the_chosen_token_and_are_logprobs(server):
    body = complete(server, max_tokens=24, logprobs=5, temperature=1.0, seed=SEED)
    logprobs = body["choices"][0]["logprobs"]
    for token, chosen, top in zip(logprobs["tokens"], logprobs["token_logprobs"],
                                  logprobs["top_logprobs"], strict=True):
        values = list(top.values())
        assert values == sorted(values, reverse=True)
        assert all(v <= 0 for v in values) and chosen <= 0
        assert top[token] == chosen
        # the chosen token is among the 5 best exactly when its logprob reaches the 5th best
        assert (len(top) == 5) == (chosen >= values[4])


def test_echo_with_zero_max_tokens_scores_the_prompt(server, reference):
    body = complete(server, max_tokens=0, echo=True, logprobs=2)
    choice = body["choices"][0]
    assert choice["text"] == PROMPT and choice["token_ids"] == []
    assert body["usage"]["prompt_tokens"] == 8 and body["usage"]["completion_tokens"] == 0
    logprobs = choice["logprobs"]
    assert logprobs["tokens"] == PROMPT.split()
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert_offsets(choice["text"], logprobs)
    ids = reference.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():  # the model's own log-softmax, row i scoring prompt token i + 1
        rows = reference.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    expected = [rows[i, t].item() for i, t in enumerate(ids[1:])]
    torch.testing.assert_close(logprobs["token_logprobs"][1:], expected, **TOLERANCE)
    scored = generate(reference, PROMPT, max_new_tokens=0, echo=True, logprobs=2)
    assert_matches_engine({k: v[1:] for k, v in logprobs.items()}, scored.prompt_logprobs[1:],
                          reference, top_n=2)


def test_echo_puts_the_prompt_first(server, reference):
    body = complete(server, max_tokens=4, echo=True, logprobs=1, temperature=0)
    expected = generate(reference, PROMPT, max_new_tokens=4, logprobs=1, echo=True)
    choice = body["choices"][0]
    assert choice["text"] == PROMPT + expected.text
    assert choice["token_ids"] == expected.token_ids  # the new tokens only
    assert len(choice["logprobs"]["tokens"]) == 8 + 4
    assert_matches_engine({k: v[8:] for k, v in choice["logprobs"].items()}, expected.logprobs,
                          reference, top_n=1)
    assert choice["logprobs"]["text_offset"][8] == len(PROMPT)


def test_a_batch_of_token_prompts_as_lm_eval_sends_it(server, reference):
    """lm-evaluation-harness's loglikelihood request: token-id prompts, echo, max_tokens 1."""
    prompts = [reference.tokenizer(p, add_special_tokens=False)["input_ids"]
               for p in (PROMPT, "w5 w6 w7")]
    body = complete(server, prompt=prompts, max_tokens=1, echo=True, logprobs=1, temperature=0,
                    seed=1234, model="tiny-llama-0")
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for choice, ids in zip(body["choices"], prompts, strict=True):
        scored = generate(reference, ids, max_new_tokens=1, echo=True, logprobs=1)
        torch.testing.assert_close(choice["logprobs"]["token_logprobs"][1:],
                                   [e.logprob for e in scored.prompt_logprobs[1:] + scored.logprobs],
                                   **TOLERANCE)
        assert choice["text"] == reference.tokenizer.decode(ids) + scored.text
    assert body["usage"]["prompt_tokens"] == 8 + 3 and body["usage"]["completion_tokens"] == 2


def test_stream_carries_the_logprobs_in_its_final_chunk(server):
    full = complete(server, max_tokens=8, logprobs=2, echo=True, temperature=0)
    body = {"prompt": PROMPT, "max_tokens": 8, "logprobs": 2, "echo": True, "temperature": 0,
            "stream": True}
    with httpx.stream("POST", f"{server}/v1/completions", json=body) as response:
        chunks = [json.loads(line.removeprefix("data: ")) for line in response.iter_lines()
                  if line.startswith("data: {")]
    choices = [c["choices"][0] for c in chunks]
    assert "".join(c["text"] for c in choices) == full["choices"][0]["text"]
    assert choices[0]["text"] == PROMPT  # echo: the prompt first
    assert all(c["logprobs"] is None for c in choices[:-1])
    assert choices[-1]["logprobs"] == full["choices"][0]["logprobs"]


def test_tokens_that_are_not_utf8_alone_are_shown_as_bytes():
    """The demo's byte-level BPE splits 'ü' and '€' into pieces of their UTF-8 bytes."""
    tokenizer = AutoTokenizer.from_pretrained(DEMO_DIR / "demo")
    renderer = TokenRenderer(tokenizer)
    text = "x = 'ü€'"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    rendered = [renderer.render(token) for token in ids]
    assert b"".join(raw for _, raw in rendered).decode() == text
    assert [shown for shown, _ in rendered] == [
        "x", " =", " '", "bytes:\\xc3", "bytes:\\xbc", "bytes:\\xe2", "bytes:\\x82",
        "bytes:\\xac", "'"]
    # where each begins in the text; a piece of a character points at that character
    assert renderer.offsets(ids) == [0, 1, 3, 5, 5, 6, 6, 6, 7]
    assert renderer.render(tokenizer.eos_token_id) == ("<|endoftext|>", b"<|endoftext|>")


def test_chat_logprobs(client, reference):
    messages = [{"role": "user", "content": "w20 w21 w22"}]
    result = client.chat.completions.create(model="tiny-llama-0", messages=messages,
                                            max_tokens=6, temperature=1.0, seed=SEED,
                                            logprobs=True, top_logprobs=2)
    expected = generate(reference, "w2 w20 w21 w22 w3", max_new_tokens=6, temperature=1.0,
                        seed=SEED, logprobs=2)
    content = result.choices[0].logprobs.content
    assert [c.token for c in content] == [reference.tokenizer.decode([t])
                                          for t in expected.token_ids]
    assert [bytes(c.bytes).decode() for c in content] == [c.token for c in content]
    torch.testing.assert_close([c.logprob for c in content],
                               [e.logprob for e in expected.logprobs], **TOLERANCE)
    for entry, engine in zip(content, expected.logprobs, strict=True):
        assert [t.token for t in entry.top_logprobs] == [reference.tokenizer.decode([t])
                                                         for t, _ in engine.top]
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
    plain = client.chat.completions.create(model="tiny-llama-0", messages=messages, max_tokens=2)
    assert plain.choices[0].logprobs is None
    chunks = list(client.chat.completions.create(
        model="tiny-llama-0", messages=messages, max_tokens=6, temperature=1.0, seed=SEED,
        logprobs=True, top_logprobs=2, stream=True))
    assert chunks[-1].choices[0].logprobs.content == content


def test_chat_top_logprobs_needs_logprobs(client):
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs: true"):
        client.chat.completions.create(model="tiny-llama-0", max_tokens=2, top_logprobs=2,
                                       messages=[{"role": "user", "content": "w5"}])


def test_seeded_sampling_is_reproducible_and_method_independent(client):
    def sample(seed: int, method: str | None = None) -> str:
        extra = {"tokenforge": {"method": method}} if method else None
        return client.completions.create(model="tiny-llama-0", prompt=PROMPT, max_tokens=24,
                                         temperature=1.0, seed=seed,
                                         extra_body=extra).choices[0].text

    first = sample(SEED)  # the server's default method: token-recycling
    assert sample(SEED) == first
    assert sample(SEED, "vanilla") == first
    assert sample(SEED + 1) != first


def _stop_string(text: str) -> str:
    """A stop string that spans two words (so it completes inside a token) a few words in."""
    words = text.split(" ")
    for k in range(3, len(words) - 1):
        stop = f"{words[k][-1]} {words[k + 1][:2]}"
        if text.find(stop) >= len(" ".join(words[:k])):
            return stop
    raise AssertionError(f"no usable stop string in {text!r}")


@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize("method", [m.name for m in all_methods()])
def test_stop_strings_give_vanillas_tokens_and_usage(server, reference, method, sampling):
    free = generate(reference, PROMPT, max_new_tokens=24, **SAMPLINGS[sampling])
    stop = _stop_string(free.text)
    expected = generate(reference, PROMPT, max_new_tokens=24, stop=stop, **SAMPLINGS[sampling])
    assert 3 < len(expected.token_ids) < len(free.token_ids)
    body = complete(server, max_tokens=24, stop=stop, **SAMPLINGS[sampling],
                    tokenforge={"method": method})
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["token_ids"] == expected.token_ids
    assert choice["text"] == expected.text and stop not in choice["text"]
    assert body["usage"]["completion_tokens"] == len(choice["token_ids"])
