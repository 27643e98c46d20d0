"""The engine's seams and parts: token trees, the registry, verification corner cases, the
stopper's incremental text, logprobs, seeds across processes, the chain fallback and stats.
(Losslessness of every method: test_lossless.py and test_sampling.py.)"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

import tokenforge
from tests.conftest import prompts, tiny_model
from tokenforge.decoding.api import make_drafter
from tokenforge.decoding.backends.hf import TransformersBackend
from tokenforge.decoding.registry import Method, Registry, all_methods, get_method, option
from tokenforge.decoding.sampling import Sampler, SamplingParams
from tokenforge.decoding.stopper import Stopper
from tokenforge.decoding.tree import TokenTree
from tokenforge.decoding.verify import VerifyResult, verify_sampling
from tokenforge.errors import InvalidOptionError, UnsupportedModelError

METHODS = [m.name for m in all_methods() if m.build is not None]


def test_tree_structure_and_cuts():
    #        root
    #       /    \
    #     0(a)   1(b)
    #     |  \
    #   2(c) 3(d)
    tree = TokenTree([10, 11, 12, 13], [-1, -1, 0, 0])
    assert tree.depths == [1, 1, 2, 2]
    assert tree.children == [[0, 1], [2, 3], [], [], []]
    assert tree.path_to(3) == [0, 3]
    assert tree.truncate(1).tokens == [10, 11]
    chain = tree.first_chain()
    assert chain.tokens == [10, 12] and chain.is_chain
    assert chain.map_into(tree) == [0, 2]
    sub = tree.subtree([0, 3])
    assert sub.tokens == [10, 13] and sub.parents == [-1, 0] and sub.map_into(tree) == [0, 3]
    assert tree.block_mask() is TokenTree([1, 2, 3, 4], [-1, -1, 0, 0]).block_mask()  # cached
    with pytest.raises(ValueError):
        TokenTree([1, 2], [1, -1])


def test_registry_declares_options_once_and_refuses_duplicates():
    @dataclass(frozen=True)
    class Opts:
        width: int = option(4, "how wide")
        name: str = option("a", "a choice", choices=("a", "b"))

    registry = Registry((), "toy")
    method = registry.register(Method("toy", "-", "a toy", build=None, options_type=Opts))
    assert method.options["width"].default == 4 and method.options["width"].help == "how wide"
    assert method.parse({"width": "7"}) == Opts(width=7)
    assert method.resolve_options({}) == {"width": 4, "name": "a"}
    with pytest.raises(InvalidOptionError, match="one of a, b"):
        method.parse({"name": "c"})
    with pytest.raises(InvalidOptionError, match="unknown option"):
        method.parse({"depth": 1})
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Method("toy", "-", "again", build=None))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_declares_its_options_as_a_dataclass(method):
    spec = get_method(method)
    defaults = spec.parse({})
    assert spec.resolve_options({}) == {k: o.default for k, o in spec.options.items()}
    assert type(defaults) is spec.options_type


def test_token_recycling_statistics_follow_a_cut_tree():
    """The engine verifies only the first chain on models without tree masks; the tree-size
    statistics must then read the chain's own template indices, not the full template's."""
    loaded = tiny_model("llama")
    drafter = make_drafter(loaded, "token-recycling")
    drafter.matrix[:] = torch.arange(8)[None].numpy() + 1  # every row drafts tokens 1..8
    full = drafter.propose([5, 6, 7], max_depth=8)
    chain = full.first_chain()
    template_ids = [drafter._template_ids[i] for i in chain.map_into(full)]
    assert template_ids != list(range(len(chain)))  # the chain skips template indices
    path = list(range(len(chain)))  # the whole chain accepted
    drafter.feedback(chain, torch.zeros(1 + len(chain), 96),
                     VerifyResult(path, chain.tokens + [1]))
    for n in drafter.sizes:
        assert drafter.accepted_by_size[n] == sum(t < n for t in template_ids)


def test_residual_that_rounds_to_zero_falls_back_to_p():
    """When q dominates p everywhere (q ~ p after float32 rounding), max(0, p - q) is all zeros;
    the bonus is then drawn from p instead of failing in multinomial."""
    sampler = Sampler(SamplingParams(temperature=1.0, seed=0, sampler="rejection"), 8)
    logits = torch.linspace(0, 3, 8)[None].repeat(2, 1)
    p = SamplingParams(temperature=1.0).probs(logits[0])
    q = p + 1e-3
    q[0] += 0.5  # q >= p everywhere: the residual is all zeros
    tree = TokenTree([0], [-1], torch.stack([q, torch.zeros(8)]))  # rejected almost surely
    rejected = 0
    for _ in range(50):
        result = verify_sampling(tree, logits, sampler)
        rejected += not result.path
        assert p[result.tokens[-1]] > 0
    assert rejected > 40


def test_chain_fallback_without_tree_masks():
    """Backends whose attention ignores custom masks verify the tree's first chain: lossless."""
    loaded = tiny_model("qwen2")
    backend = TransformersBackend(loaded.model)
    backend.supports_tree = False
    loaded.backends[("transformers", "target")] = backend
    drafter = make_drafter(loaded, "pld", num_matches=4)
    for prompt in prompts(6, seed=5):
        vanilla = tokenforge.generate(loaded, prompt, max_new_tokens=20)
        chained = tokenforge.generate(loaded, prompt, max_new_tokens=20, drafter=drafter,
                                      backend="transformers")
        assert chained.token_ids == vanilla.token_ids
        assert max(chained.stats.forward_sizes) > 1


def test_cache_without_layers_gives_clear_error():
    class OpaqueCache:
        layers = None

    backend = TransformersBackend(tiny_model("llama").model)
    backend.cache = OpaqueCache()
    with pytest.raises(UnsupportedModelError, match="chain drafter"):
        backend.keep(3, [0, 2])


def test_stats_split_time_and_count_forwards():
    loaded = tiny_model("llama")
    prompt = prompts(2)[1]
    out = tokenforge.generate(loaded, prompt, method="pld", max_new_tokens=24)
    s = out.stats
    assert s.new_tokens == len(out.token_ids) > 1
    assert sum(s.acceptance_histogram.values()) == s.target_forwards - 1  # prefill has no draft
    assert sum(s.forward_sizes.values()) == s.target_forwards - 1
    assert sum((k + 1) * n for k, n in s.acceptance_histogram.items()) + 1 >= s.new_tokens
    assert math.isclose(s.prefill_s + s.draft_s + s.verify_s + s.other_s, s.total_s, rel_tol=1e-6)
    assert s.prefill_s > 0
    assert s.mean_accepted_tokens == s.new_tokens / s.target_forwards
    assert s.backend.startswith("static") and s.sampler == "greedy" and s.overlap is None
    sps = tokenforge.generate(loaded, prompt, method="sps", max_new_tokens=24,
                              draft=tiny_model("llama", seed=1))
    assert sum(sps.stats.draft_forward_sizes.values()) > 0
    assert len(prompt) + 1 not in sps.stats.draft_forward_sizes  # the draft's prefill is not


# the stopper --------------------------------------------------------------------------------

def test_incremental_text_equals_the_full_decode(demo):
    """Text decoded a window at a time equals one decode of all tokens, on the byte-level BPE
    demo tokenizer (multi-byte characters included) and on a word-level one."""
    for tokenizer, ids in ((demo.tokenizer, demo.tokenizer("x = 'héllo wörld ✓ 日本'\n" * 3)[
            "input_ids"]), (tiny_model("llama").tokenizer, list(range(2, 60)))):
        streamed: list[str] = []
        stopper = Stopper(tokenizer, set(), 10_000, [], streamed.append)
        for i in range(0, len(ids), 3):
            stopper.add(ids[i:i + 3])
        stopper.close()
        full = tokenizer.decode(ids, skip_special_tokens=True)
        assert stopper.text() == full == "".join(streamed)


@pytest.mark.parametrize("method", METHODS)
def test_stop_strings_cut_the_same_tokens_for_every_method(demo, demo_draft, method):
    """Tokens are taken one at a time, so a stop string ends every method on the token that
    completed it: ids, text and counts equal plain decoding's."""
    prompt, stop = "def add(a, b):\n    return a + b\n\n\ndef", ["\n\n"]
    want = tokenforge.generate(demo, prompt, max_new_tokens=64, stop=stop)
    assert want.stats.finish_reason == "stop"
    drafter = make_drafter(demo, method, demo_draft if get_method(method).needs_draft else None)
    got = tokenforge.generate(demo, prompt, max_new_tokens=64, stop=stop, drafter=drafter)
    assert (got.token_ids, got.text, got.stats.new_tokens) == (
        want.token_ids, want.text, len(want.token_ids))
    assert "\n\n" not in got.text and "\n\n" in demo.tokenizer.decode(got.token_ids)


# logprobs and seeds -------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_logprobs_are_the_targets_whichever_method_runs(temperature):
    loaded = tiny_model("llama", eos=0)
    draft = tiny_model("llama", seed=1)
    prompt = prompts(2, seed=9)[1]
    runs = {}
    for method in METHODS:
        spec = get_method(method)
        out = tokenforge.generate(loaded, prompt, max_new_tokens=16, temperature=temperature,
                                  seed=3, logprobs=3, method=method,
                                  draft=draft if spec.needs_draft else None)
        runs[method] = out
    reference = tokenforge.generate(loaded, prompt, max_new_tokens=16, temperature=temperature,
                                    seed=3, logprobs=3, backend="transformers")
    for method, out in runs.items():
        assert out.token_ids == reference.token_ids, method
        got = torch.tensor([t.logprob for t in out.logprobs])
        want = torch.tensor([t.logprob for t in reference.logprobs])
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=method)
        assert [[t for t, _ in x.top] for x in out.logprobs] == \
            [[t for t, _ in x.top] for x in reference.logprobs], method
    # the logprob is log p(token) under the processed distribution, and top-k is sorted
    first = reference.logprobs[0]
    assert first.top == sorted(first.top, key=lambda x: -x[1]) and all(v <= 0 for _, v in first.top)


def test_echo_scores_the_prompt():
    loaded = tiny_model("llama")
    prompt = [5, 6, 7, 8, 9]
    out = tokenforge.generate(loaded, prompt, max_new_tokens=0, echo=True, logprobs=2)
    assert out.token_ids == [] and [t.token for t in out.prompt_logprobs] == prompt
    assert out.prompt_logprobs[0].logprob is None
    with torch.inference_mode():
        logp = torch.log_softmax(loaded.model(torch.tensor([prompt])).logits[0].float(), -1)
    want = [float(logp[i, prompt[i + 1]]) for i in range(4)]
    assert [t.logprob for t in out.prompt_logprobs[1:]] == pytest.approx(want, abs=1e-6)
    with pytest.raises(InvalidOptionError, match="max_new_tokens"):
        tokenforge.generate(loaded, prompt, max_new_tokens=0)
    single = tokenforge.generate(loaded, [5], max_new_tokens=1, echo=True, logprobs=1)
    assert [t.logprob for t in single.prompt_logprobs] == [None] and len(single.logprobs) == 1


SEEDED = """
import json, sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
from tests.conftest import tiny_model
import tokenforge
target, draft = tiny_model("llama", eos=0), tiny_model("llama", seed=1)
out = {{}}
for method in {methods!r}:
    spec = tokenforge.decoding.registry.get_method(method)
    out[method] = tokenforge.generate(target, [4, 5, 6, 4, 5], method=method, max_new_tokens=20,
        temperature=1.0, seed=42, draft=draft if spec.needs_draft else None).token_ids
print(json.dumps(out))
"""


def test_seeds_reproduce_across_processes_for_every_method():
    """The same seed gives the same sample in another process, for every method, whatever state
    its drafter carries (two calls in this process share a drafter; the other process does not)
    and it is vanilla's sample."""
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    script = SEEDED.format(root=root, methods=METHODS + ["vanilla"])
    other = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True,
                                      text=True, check=True, timeout=300).stdout)
    target, draft = tiny_model("llama", eos=0), tiny_model("llama", seed=1)
    for method in METHODS:
        spec = get_method(method)
        drafter = make_drafter(target, method, draft if spec.needs_draft else None)
        here = [tokenforge.generate(target, [4, 5, 6, 4, 5], drafter=drafter, max_new_tokens=20,
                                    temperature=1.0, seed=42).token_ids for _ in range(2)]
        assert here[0] == here[1] == other[method] == other["vanilla"], method


def test_sampling_params_refuse_bad_values():
    for bad in (dict(temperature=float("nan")), dict(temperature=float("inf")),
                dict(temperature="0.5"), dict(top_k=1.5), dict(top_p=0.0), dict(seed="x"),
                dict(sampler="beam")):
        with pytest.raises(InvalidOptionError):
            SamplingParams(**bad)
