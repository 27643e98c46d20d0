"""Greedy losslessness of every registered method, driven by the registry.

For each method (a new one is covered as soon as it registers) and each of six model families
(Llama, Qwen2, GPT-2, Mistral, Phi-3, Gemma; tiny random models in float64): token ids equal
plain decoding's on the transformers fallback backend, length and EOS included, and after every
step the target's KV cache equals a fresh prefill of the committed tokens (PEARL's included).
Draft-model methods take turns with a far draft (another random model) and a close one (the
target plus weight noise, so long accepted runs happen). The same on the bundled demo model,
float32, where the fast path decodes against the fallback's reference.
"""

from __future__ import annotations

import pytest
import torch

import tokenforge
from tests.conftest import ALL_FAMILIES, prompts, tiny_model
from tokenforge.decoding import engine
from tokenforge.decoding.api import make_drafter
from tokenforge.decoding.backends import get_backend, new_backend
from tokenforge.decoding.registry import all_methods
from tokenforge.decoding.sampling import SamplingParams

METHODS = [m for m in all_methods() if m.build is not None]  # vanilla is the reference
NEW_TOKENS = 24


def close_copy(family: str, loaded, noise: float = 0.01, seed: int = 0):
    """The same model plus small weight noise: a draft that agrees most of the time."""
    copy = tiny_model(family, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mine, theirs in zip(copy.model.parameters(), loaded.model.parameters()):
            mine.copy_(theirs + noise * torch.randn(theirs.shape, generator=gen,
                                                    dtype=theirs.dtype))
    return copy


def drafters_for(method, target, drafts):
    if method.needs_draft:
        return [make_drafter(target, method.name, draft) for draft in drafts]
    return [make_drafter(target, method.name)]


def kv_check(loaded):
    """A step hook: the backend's cache equals a fresh prefill of all but the newest token."""
    def hook(backend, committed):
        fresh = new_backend(loaded.model, "transformers")
        fresh.begin(len(committed))
        fresh.forward(committed[:-1])
        assert backend.length == len(committed) - 1
        for (k, v), (k_ref, v_ref) in zip(backend.layer_kv(), fresh.layer_kv()):
            torch.testing.assert_close(k, k_ref)
            torch.testing.assert_close(v, v_ref)
    return hook


@pytest.fixture(scope="module", params=ALL_FAMILIES)
def family(request):
    """A target (token 0 is EOS), a far and a close draft, prompts, and the reference: plain
    decoding on the transformers backend."""
    target = tiny_model(request.param, eos=0)
    drafts = [tiny_model(request.param, seed=1, hidden=16, layers=1),
              close_copy(request.param, target)]
    cases = prompts(12, seed=2)
    want = [tokenforge.generate(target, p, max_new_tokens=NEW_TOKENS, backend="transformers")
            .token_ids for p in cases]
    return target, drafts, cases, want


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_greedy_identity_and_kv_invariant(family, method):
    target, drafts, cases, want = family
    drafters = drafters_for(method, target, drafts)
    backend = get_backend(target)
    accepted = 0
    for i, prompt in enumerate(cases):
        hook = kv_check(target) if i < 3 else None
        out = engine.run(backend, target.tokenizer, prompt, drafters[i % len(drafters)],
                         SamplingParams(), NEW_TOKENS, target.context_length, step_hook=hook)
        assert out.token_ids == want[i], f"prompt {i}"
        assert out.stats.new_tokens == len(out.token_ids)
        accepted += sum(k * n for k, n in out.stats.acceptance_histogram.items())
    assert accepted > 0, "no draft was ever accepted: the test would prove nothing"


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_greedy_identity_without_eos_on_both_backends(method):
    """No EOS: every generation runs to its budget; the fast path and the fallback agree."""
    target = tiny_model("llama", seed=5)
    drafts = [close_copy("llama", target, seed=5)]
    for kind in ("static", "transformers"):
        drafter = drafters_for(method, target, drafts)[0]
        for prompt in prompts(4, seed=6):
            want = tokenforge.generate(target, prompt, max_new_tokens=30, backend="transformers")
            got = tokenforge.generate(target, prompt, max_new_tokens=30, drafter=drafter,
                                      backend=kind)
            assert got.token_ids == want.token_ids and len(got.token_ids) == 30


DEMO_PROMPTS = [
    "def fibonacci(n):", "import os\nimport sys\n", "class Stack:\n    def __init__(self):",
    "    for i in range(", "def __repr__(self):\n        return", "# Copyright",
    "if __name__ == '__main__':", "    try:\n        import", "from collections import",
    "def read_file(path):\n    with open(path) as f:", "    raise ValueError(", "    @property",
]


@pytest.fixture(scope="module")
def demo_reference(demo):
    return [tokenforge.generate(demo, p, max_new_tokens=40, backend="transformers").token_ids
            for p in DEMO_PROMPTS]


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_greedy_identity_on_demo(demo, demo_draft, demo_reference, method):
    """float32 demo model: the fast path's output for every method equals the fallback's plain
    decoding, and the method really speculates."""
    drafter = drafters_for(method, demo, [demo_draft])[0]
    tokens = forwards = 0
    for prompt, want in zip(DEMO_PROMPTS, demo_reference):
        out = tokenforge.generate(demo, prompt, max_new_tokens=40, drafter=drafter)
        assert out.token_ids == want, prompt
        assert out.stats.backend.startswith("static")
        tokens += out.stats.new_tokens
        forwards += out.stats.target_forwards
    assert tokens / forwards > 1.2


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_every_method_runs_in_bfloat16(method):
    """bfloat16 weights (float32 activations on the CPU's fast path) for every method, greedy and
    sampled. Identity with bfloat16 plain decoding is measured by the benchmark, not promised."""
    target = tiny_model("llama", seed=7)
    draft = tiny_model("llama", seed=8, hidden=16, layers=1)
    for loaded in (target, draft):
        loaded.model.to(torch.bfloat16)
    drafter = drafters_for(method, target, [draft])[0]
    for temperature in (0.0, 1.0):
        out = tokenforge.generate(target, [3, 4, 5, 3, 4], max_new_tokens=12, drafter=drafter,
                                  temperature=temperature, seed=1)
        assert len(out.token_ids) == 12 and out.stats.backend.startswith("static")
