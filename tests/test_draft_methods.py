"""Draft-model methods (sps, dyspec, rsd, pearl): greedy output identical to vanilla, length
included, on tiny random pairs of two families and on the bundled demo pair; draft-cache upkeep."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import tiny_model

from tokenforge import generate, make_drafter
from tokenforge.decoding import kv
from tokenforge.decoding.sampling import SamplingParams
from tokenforge.errors import InvalidOptionError

METHODS = [
    ("sps", {}),
    ("sps", {"adaptive": True, "min_confidence": 0.2}),
    ("dyspec", {}),
    ("rsd", {"variant": "c"}),
    ("rsd", {"variant": "s"}),
    ("pearl", {}),
]
DEMO_METHODS = [METHODS[0], *METHODS[2:]]  # sps's options are covered on the tiny pairs


def ids(methods) -> list[str]:
    return [f"{m}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for m, o in methods]


def random_prompts(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, vocab) for _ in range(rng.randrange(1, 16))] for _ in range(n)]


@pytest.fixture(scope="module", params=("llama", "qwen2"))
def tiny_pair(request):
    """A target, two drafts (a weak random one, and the target plus small noise so that long
    accepted runs happen too), 20 prompts and their vanilla outputs."""
    target = tiny_model(request.param, seed=0)
    close = tiny_model(request.param, seed=0)
    with torch.no_grad():
        for p in close.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    drafts = [tiny_model(request.param, seed=1, hidden=16, layers=1), close]
    prompts = random_prompts(20, 96)
    want = [generate(target, prompt, max_new_tokens=16).token_ids for prompt in prompts]
    return target, drafts, prompts, want


@pytest.mark.parametrize("method,options", METHODS, ids=ids(METHODS))
def test_greedy_matches_vanilla_on_tiny_pairs(tiny_pair, method, options):
    target, drafts, prompts, want = tiny_pair
    drafters = [make_drafter(target, method, draft, **options) for draft in drafts]
    accepted = []
    for i, prompt in enumerate(prompts):  # the two drafts take turns
        got = generate(target, prompt, drafter=drafters[i % 2], max_new_tokens=16)
        assert got.token_ids == want[i], (method, options, prompt)
        accepted.append(got.stats.mean_accepted_tokens)
    assert sum(accepted[1::2]) / 10 > 1.2  # the close draft really gets drafts accepted


@pytest.fixture(scope="module")
def demo_reference(demo):
    return [generate(demo, prompt, max_new_tokens=24).token_ids for prompt in DEMO_PROMPTS]


@pytest.mark.parametrize("method,options", DEMO_METHODS, ids=ids(DEMO_METHODS))
def test_greedy_matches_vanilla_on_demo_pair(demo, demo_draft, demo_reference, method, options):
    drafter = make_drafter(demo, method, demo_draft, **options)
    accepted = []
    for prompt, want in zip(DEMO_PROMPTS, demo_reference):
        got = generate(demo, prompt, drafter=drafter, max_new_tokens=24)
        assert got.token_ids == want, (method, prompt)
        accepted.append(got.stats.mean_accepted_tokens)
    assert sum(accepted) / len(accepted) > 1.3


DEMO_PROMPTS = [
    "def fibonacci(n):", "import os\n", "class Stack:\n    def __init__(self):",
    "    for i in range(", "def __repr__(self):\n        return", "# Copyright",
    "if __name__ == '__main__':", "    try:\n        import", "from collections import",
    "def read_file(path):\n    with open(path) as f:", "    raise ValueError(", "    @property",
    "    def __eq__(self, other):", "import sys\nimport re\n", "def main():\n    parser = ",
    "    return self._", "    if not isinstance(", "class Error(Exception):", "    assert ",
    "    def close(self):\n",
]


@pytest.mark.parametrize("method", ["dyspec", "rsd"])
def test_draft_cache_holds_exactly_the_committed_tokens(method):
    """After tree drafting and keep_path, the draft's cache equals a fresh forward of `cached`."""
    target = tiny_model("llama", seed=0)
    draft = tiny_model("llama", seed=0)  # identical: long accepted paths through the tree
    drafter = make_drafter(target, method, draft)
    out = generate(target, [5, 6, 7], drafter=drafter, max_new_tokens=20)
    lm = drafter.lm
    assert out.stats.mean_accepted_tokens > 2
    committed = [5, 6, 7] + out.token_ids  # the draft may also hold accepted tokens past the cut
    n = min(len(committed), len(lm.cached))
    assert n > 10 and lm.cached[:n] == committed[:n]
    fresh = kv.new_cache(draft.model)
    with torch.no_grad():
        kv.cached_forward(draft.model, torch.tensor([lm.cached]), fresh)
    assert kv.cache_len(lm.cache) == len(lm.cached)
    for mine, ref in zip(lm.cache.layers, fresh.layers):
        torch.testing.assert_close(mine.keys, ref.keys)
        torch.testing.assert_close(mine.values, ref.values)


def test_pearl_reports_overlap():
    target, draft = tiny_model("llama", seed=0), tiny_model("llama", seed=1, hidden=16)
    for parallel in (True, False):
        stats = generate(target, [3, 4], method="pearl", draft=draft, max_new_tokens=16,
                         parallel=parallel).stats
        info = stats.as_dict()
        assert 0.0 <= info["overlap"] <= 1.0 and stats.draft_s > 0
        assert parallel or stats.draft_hidden_s == 0


def test_pearl_can_be_cancelled():
    target, draft = tiny_model("llama", seed=0), tiny_model("llama", seed=1, hidden=16)
    pearl = make_drafter(target, "pearl", draft)
    out, _, stats = pearl.generate_ids(target.model, target.tokenizer, [3, 4], SamplingParams(),
                                       16, None, should_stop=lambda: True)
    assert len(out) == 1 and stats.finish_reason == "cancelled"


def test_draft_methods_need_a_matching_draft():
    target = tiny_model("llama", seed=0)
    with pytest.raises(InvalidOptionError, match="needs a draft model"):
        generate(target, [1, 2], method="sps")
    with pytest.raises(InvalidOptionError, match="different tokenizer"):
        make_drafter(target, "dyspec", tiny_model("llama", vocab_size=64, seed=1))
    with pytest.raises(InvalidOptionError, match="branches"):
        make_drafter(target, "rsd", tiny_model("llama", seed=1), branches="2,x")
