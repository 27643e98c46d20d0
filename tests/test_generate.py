"""Plain decoding (`vanilla`): identity with transformers greedy generate, sampling, stopping,
streaming and the user-facing errors."""

from __future__ import annotations

import pytest
import torch

import tokenforge
from tests.conftest import prompts, tiny_model
from tokenforge.decoding.sampling import SamplingParams
from tokenforge.errors import InvalidOptionError, PromptError


def hf_greedy(loaded, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    ids = torch.tensor([prompt_ids])
    out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=max_new_tokens,
                                pad_token_id=loaded.tokenizer.pad_token_id)
    return out[0, len(prompt_ids):].tolist()


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_vanilla_matches_hf_generate_on_tiny_models(family):
    loaded = tiny_model(family, eos=0)  # token 0 is EOS: some prompts stop early
    for prompt in prompts(20, seed=1):
        ours = tokenforge.generate(loaded, prompt, max_new_tokens=24)
        theirs = hf_greedy(loaded, prompt, 24)
        assert ours.token_ids == theirs
        assert ours.stats.mean_accepted_tokens == 1.0


def test_vanilla_matches_hf_generate_on_demo(demo):
    texts = ["def fib(n):", "import os\n", "class Stack:\n    def __init__(self):",
             "for i in range(10):", "    return self._", "# Copyright", "from typing import",
             "def __repr__(self):", "if __name__ == '__main__':", "raise ValueError(",
             "with open(path) as f:", "    @property\n    def name(self):", "try:\n    import",
             "lambda x:", "self.assertEqual(", "def main(argv=None):", "print(", "x = [",
             '"""Return the', "while True:"]
    for text in texts:
        ids = demo.tokenizer(text, add_special_tokens=False)["input_ids"]
        ours = tokenforge.generate(demo, text, max_new_tokens=32)
        assert ours.token_ids == hf_greedy(demo, ids, 32), text
        assert ours.text == demo.tokenizer.decode(ours.token_ids, skip_special_tokens=True)


def test_eos_stops_and_is_kept_like_transformers():
    loaded = tiny_model("llama", eos=0)
    stopped = 0
    for prompt in prompts(30, seed=3):
        out = tokenforge.generate(loaded, prompt, max_new_tokens=40)
        if out.stats.finish_reason == "eos":
            stopped += 1
            assert out.token_ids[-1] == 0 and 0 not in out.token_ids[:-1]
        else:
            assert len(out.token_ids) == 40
    assert stopped > 0  # the fixture really exercises EOS


def test_sampling_is_seeded_and_respects_top_k():
    loaded = tiny_model("qwen2")
    prompt = prompts(1)[0]
    a = tokenforge.generate(loaded, prompt, max_new_tokens=16, temperature=1.0, seed=7)
    b = tokenforge.generate(loaded, prompt, max_new_tokens=16, temperature=1.0, seed=7)
    c = tokenforge.generate(loaded, prompt, max_new_tokens=16, temperature=1.0, seed=8)
    assert a.token_ids == b.token_ids != c.token_ids
    # top_k=1 is greedy
    greedy = tokenforge.generate(loaded, prompt, max_new_tokens=16)
    top1 = tokenforge.generate(loaded, prompt, max_new_tokens=16, temperature=2.0, top_k=1, seed=1)
    assert top1.token_ids == greedy.token_ids


def test_sampling_params_filters():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    p = SamplingParams(temperature=1.0, top_k=2).probs(logits)
    assert (p[2:] == 0).all() and torch.isclose(p.sum(), torch.tensor(1.0))
    p = SamplingParams(temperature=1.0, top_p=0.7).probs(logits)
    full = torch.softmax(logits, -1)
    assert full[0] < 0.7 < full[0] + full[1]  # so exactly two tokens survive
    assert (p > 0).sum() == 2
    assert torch.equal(SamplingParams().probs(logits), torch.tensor([1.0, 0, 0, 0, 0]))
    # extreme values stay finite: a vanishing top_p keeps the top token, a vanishing temperature
    # is greedy instead of overflowing
    assert torch.equal(SamplingParams(temperature=1.0, top_p=5e-324).probs(logits), full.new_tensor(
        [1.0, 0, 0, 0, 0]))
    assert SamplingParams(temperature=5e-324).greedy


def test_stop_strings_and_streaming(demo):
    chunks: list[str] = []
    out = tokenforge.generate(demo, "def add(a, b):\n", max_new_tokens=64, stop=["\n\n"],
                              on_text=chunks.append)
    assert "".join(chunks) == out.text
    full = tokenforge.generate(demo, "def add(a, b):\n", max_new_tokens=64)
    if "\n\n" in full.text:
        assert out.stats.finish_reason == "stop"
        assert out.text == full.text[: full.text.index("\n\n")]
    else:
        assert out.text == full.text


@pytest.mark.parametrize("kwargs, error, words", [
    ({"prompt": ""}, PromptError, "empty"),
    ({"max_new_tokens": 0}, InvalidOptionError, "max_new_tokens"),
    ({"max_new_tokens": -3}, InvalidOptionError, "max_new_tokens"),
    ({"temperature": -0.5}, InvalidOptionError, "temperature"),
    ({"temperature": 1.0, "top_p": 0.0}, InvalidOptionError, "top_p"),
    ({"temperature": 1.0, "top_p": 1.5}, InvalidOptionError, "top_p"),
    ({"method": "nope"}, InvalidOptionError, "unknown method"),
    ({"method": "pld", "bogus": 1}, InvalidOptionError, "unknown option"),
    ({"method": "pld", "num_draft": "many"}, InvalidOptionError, "expects an integer"),
    ({"method": "pld", "num_draft": 0}, InvalidOptionError, "positive"),
    ({"temperature": "0.5"}, InvalidOptionError, "finite number"),
    ({"temperature": float("nan")}, InvalidOptionError, "finite number"),
    ({"temperature": float("inf")}, InvalidOptionError, "finite number"),
    ({"temperature": 1.0, "seed": "x"}, InvalidOptionError, "seed must be an integer"),
    ({"on_text": 123}, InvalidOptionError, "on_text must be callable"),
    ({"prompt": b"w3 w4"}, PromptError, "decode bytes first"),
    ({"prompt": 7}, PromptError, "str or a list of token ids"),
    ({"model": 3}, InvalidOptionError, "LoadedModel"),
    ({"logprobs": 50}, InvalidOptionError, "logprobs"),
    ({"sampler": "beam", "temperature": 1.0}, InvalidOptionError, "sampler"),
    ({"backend": "fast"}, InvalidOptionError, "unknown backend"),
])
def test_bad_input_gives_clear_errors(kwargs, error, words):
    args = {"model": tiny_model("llama"), "prompt": "w3 w4 w5", **kwargs}
    with pytest.raises(error, match=words):
        tokenforge.generate(**args)


def test_a_model_name_is_loaded_for_you():
    out = tokenforge.generate("demo-draft", "def f(x):", max_new_tokens=3)
    assert len(out.token_ids) == 3


def test_prompt_longer_than_context():
    loaded = tiny_model("gpt2")  # n_positions = 512
    with pytest.raises(PromptError, match="context is 512"):
        tokenforge.generate(loaded, " ".join(["w5"] * 600))


def test_generation_stops_at_the_context_limit():
    loaded = tiny_model("gpt2")
    out = tokenforge.generate(loaded, [5] * 500, max_new_tokens=100)
    assert out.stats.finish_reason == "context"
    assert len(out.token_ids) == 12  # 500 + 12 = 512 positions
