"""The speculative engine: token trees, the KV invariant, greedy identity and sampling
distribution for every training-free drafter (pld, token-recycling, aded)."""

from __future__ import annotations

import math

import pytest
import torch

import tokenforge
from tests.conftest import FAMILIES, prompts, tiny_model
from tokenforge.decoding import engine, kv
from tokenforge.decoding.api import make_drafter
from tokenforge.decoding.sampling import SamplingParams
from tokenforge.decoding.tree import TokenTree
from tokenforge.errors import UnsupportedModelError

DRAFTERS = ("pld", "token-recycling", "aded")
# trees that draft something on tiny models (pld's tree option merges several matches)
DRAFTER_OPTIONS = {"pld": {"num_matches": 3}, "token-recycling": {"tree_size": "80"}, "aded": {}}


def test_tree_mask_positions_and_paths():
    #        root
    #       /    \
    #     0(a)   1(b)
    #     |  \
    #   2(c) 3(d)
    tree = TokenTree([10, 11, 12, 13], [-1, -1, 0, 0])
    assert tree.depths == [1, 1, 2, 2]
    assert tree.children == [[0, 1], [2, 3], [], [], []]
    assert tree.position_ids(5, "cpu").tolist() == [[5, 6, 6, 7, 7]]
    mask = tree.attention_mask(2, "cpu")[0, 0].int().tolist()
    assert mask == [[1, 1, 1, 0, 0, 0, 0],
                    [1, 1, 1, 1, 0, 0, 0],
                    [1, 1, 1, 0, 1, 0, 0],
                    [1, 1, 1, 1, 0, 1, 0],
                    [1, 1, 1, 1, 0, 0, 1]]
    additive = tree.attention_mask(2, "cpu", dtype=torch.float32)
    assert (additive == 0).equal(tree.attention_mask(2, "cpu"))
    assert tree.path_to(3) == [0, 3]
    assert tree.truncate(1).tokens == [10, 11]
    assert tree.first_chain().tokens == [10, 12] and tree.first_chain().is_chain
    sub = tree.subtree([0, 3])
    assert sub.tokens == [10, 13] and sub.parents == [-1, 0]
    with pytest.raises(ValueError):
        TokenTree([1, 2], [1, -1])


def test_tree_forward_matches_sequential_logits():
    """Every root-to-node path in a tree forward gets the logits a plain forward gives it."""
    loaded = tiny_model("llama")
    model = loaded.model
    prefix = [3, 4, 5, 6]
    tree = TokenTree([7, 8, 9, 10, 11], [-1, -1, 0, 2, 1])
    with torch.inference_mode():
        cache = kv.new_cache(model)
        kv.cached_forward(model, torch.tensor([prefix[:-1]]), cache)
        logits = engine.tree_forward(model, prefix[-1], tree, len(prefix) - 1, cache, "cpu")
        for node in range(len(tree)):
            seq = prefix + [tree.tokens[i] for i in tree.path_to(node)]
            full = model(torch.tensor([seq])).logits[0, -1]
            torch.testing.assert_close(logits[node + 1], full)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", DRAFTERS)
def test_greedy_identity_and_kv_invariant(family, method):
    """Token ids equal vanilla's, length included, over 20 prompts; after every step the cache
    equals a fresh prefill of the committed tokens (all but the newest, the next root)."""
    loaded = tiny_model(family, eos=0)
    drafter = make_drafter(loaded, method, **DRAFTER_OPTIONS[method])
    accepted = 0
    for i, prompt in enumerate(prompts(20, seed=2)):
        vanilla = tokenforge.generate(loaded, prompt, max_new_tokens=30)
        hook = check_kv(loaded.model) if i < 4 else None
        ids, _, stats = engine.run(loaded.model, loaded.tokenizer, prompt, drafter,
                                   SamplingParams(), 30, loaded.context_length, step_hook=hook)
        assert ids == vanilla.token_ids, f"prompt {i}"
        assert stats.new_tokens == len(ids)
        accepted += sum(k * n for k, n in stats.acceptance_histogram.items())
    assert accepted > 0, "the drafter never had a draft accepted: the test proves nothing"


def check_kv(model):
    def hook(cache, committed):
        fresh = kv.new_cache(model)
        model(torch.tensor([committed[:-1]]), **{kv._cache_arg(type(model)): fresh})
        assert kv.cache_len(cache) == len(committed) - 1
        for ours, ref in zip(cache.layers, fresh.layers):
            torch.testing.assert_close(ours.keys, ref.keys)
            torch.testing.assert_close(ours.values, ref.values)
    return hook


@pytest.mark.parametrize("method", DRAFTERS)
def test_greedy_identity_on_demo(demo, method):
    texts = ["def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n"
             "def fact(n):", "import os\nimport sys\n", "class Stack:\n    def push(self, x):",
             "    def __init__(self, name):\n        self.name = name\n", "for key in d:",
             "def read(path):\n    with open(path) as f:", "if __name__ == '__main__':",
             "    raise TypeError(", "x = {'a': 1, 'b': 2}\n", "try:\n    import",
             "# Licensed to the PSF\n", "def __eq__(self, other):", "    @property\n",
             "return [x for x in", "from collections import", "def parse_args(argv):",
             "while queue:", "assert isinstance(", "self.assertEqual(", "print(f'"]
    drafter = make_drafter(demo, method)
    forwards = tokens = 0
    for text in texts:
        vanilla = tokenforge.generate(demo, text, max_new_tokens=48)
        ours = tokenforge.generate(demo, text, max_new_tokens=48, drafter=drafter)
        assert ours.token_ids == vanilla.token_ids, text
        forwards += ours.stats.target_forwards
        tokens += ours.stats.new_tokens
    assert tokens / forwards > 1.2  # the drafter really speculates on the demo model


def exact_joint(loaded, prompt: list[int], sampling: SamplingParams, n: int) -> dict:
    """Exact probability of every continuation of up to n tokens (ending early at EOS) under
    `sampling` (small vocabularies only)."""
    model = loaded.model
    eos = engine.eos_token_ids(model, loaded.tokenizer)
    out = {(): 1.0}
    for _ in range(n):
        nxt = {}
        for seq, prob in out.items():
            if seq and seq[-1] in eos:
                nxt[seq] = prob
                continue
            with torch.inference_mode():
                logits = model(torch.tensor([prompt + list(seq)])).logits[0, -1]
            p = sampling.probs(logits)
            for tok in range(len(p)):
                if p[tok] > 0:
                    nxt[seq + (tok,)] = prob * float(p[tok])
        out = nxt
    return out


def chi_square_pvalue(counts: dict, expected_probs: dict, total: int) -> float:
    """Pearson chi-square over the outcomes, cells with expected count < 5 pooled into one."""
    stat, pooled_obs, pooled_exp, cells = 0.0, 0, 0.0, 0
    for outcome, prob in expected_probs.items():
        expected = prob * total
        observed = counts.get(outcome, 0)
        if expected < 5:
            pooled_obs, pooled_exp = pooled_obs + observed, pooled_exp + expected
            continue
        stat += (observed - expected) ** 2 / expected
        cells += 1
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        cells += 1
    dof = cells - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2), torch.tensor(stat / 2)))


SAMPLES = 1500
ALPHA = 1e-3


def sample_counts(loaded, prompt, method, options, sampling_kw, n_tokens=3):
    drafter = make_drafter(loaded, method, **options) if method else None
    counts: dict = {}
    drafted = 0
    for seed in range(SAMPLES):
        out = tokenforge.generate(loaded, prompt, max_new_tokens=n_tokens, seed=seed,
                                  drafter=drafter, **sampling_kw) if drafter else \
            tokenforge.generate(loaded, prompt, max_new_tokens=n_tokens, seed=seed, **sampling_kw)
        key = tuple(out.token_ids)
        counts[key] = counts.get(key, 0) + 1
        drafted += any(k > 0 for k in out.stats.acceptance_histogram)
    return counts, drafted


@pytest.mark.parametrize("method", DRAFTERS)
def test_sampling_distribution_matches_target(method):
    """Statistic: Pearson chi-square of the first 3 sampled tokens (8-token vocabulary, all
    3-token outcomes, sparse cells pooled) against the exact target distribution computed from
    the model. Bound: p-value >= 1e-3, so a correct sampler fails with probability 0.1% (the
    seeds are fixed, so the test is deterministic). The same check rejects a verifier that
    accepts every draft (see test_sampling_check_has_power)."""
    loaded = tiny_model("llama", vocab_size=8, hidden=16, seed=3)
    prompt = [1] * 10
    sampling_kw = {"temperature": 1.0, "top_k": 6}
    exact = exact_joint(loaded, prompt, SamplingParams(**sampling_kw), 3)
    counts, drafted = sample_counts(loaded, prompt, method, DRAFTER_OPTIONS[method], sampling_kw)
    assert drafted > SAMPLES // 10, "drafts were rarely accepted: the test would prove little"
    assert chi_square_pvalue(counts, exact, SAMPLES) >= ALPHA


def test_sampling_check_has_power(monkeypatch):
    """A verifier that always accepts a deterministic draft is caught by the same statistic."""
    from tokenforge.decoding import verify as verify_module

    def accept_everything(tree, logits, sampling, gen):
        path = tree.first_chain()
        last = len(path) - 1
        tokens = path.tokens + [sampling.sample(logits[last + 1], gen)]
        return verify_module.VerifyResult(list(range(len(path))), tokens)

    monkeypatch.setattr(engine, "verify", accept_everything)
    loaded = tiny_model("llama", vocab_size=8, hidden=16, seed=3)
    prompt = [1] * 10
    sampling_kw = {"temperature": 1.0, "top_k": 6}
    exact = exact_joint(loaded, prompt, SamplingParams(**sampling_kw), 3)
    counts, _ = sample_counts(loaded, prompt, "pld", {}, sampling_kw)
    assert chi_square_pvalue(counts, exact, SAMPLES) < ALPHA


def test_chain_fallback_without_tree_masks(monkeypatch):
    """Models whose attention ignores custom masks get the tree's first chain: still lossless."""
    loaded = tiny_model("qwen2")
    monkeypatch.setattr(engine, "NO_TREE_MASK", {loaded.model.config._attn_implementation})
    drafter = make_drafter(loaded, "pld", num_matches=4)
    for prompt in prompts(6, seed=5):
        vanilla = tokenforge.generate(loaded, prompt, max_new_tokens=20)
        assert tokenforge.generate(loaded, prompt, max_new_tokens=20,
                                   drafter=drafter).token_ids == vanilla.token_ids


def test_cache_without_layers_gives_clear_error():
    class OpaqueCache:
        layers = None

    with pytest.raises(UnsupportedModelError, match="chain drafter"):
        kv.keep(OpaqueCache(), 3, [0, 2])


def test_stats_split_time_and_count_forwards():
    loaded = tiny_model("llama")
    prompt = prompts(2)[1]
    out = tokenforge.generate(loaded, prompt, method="pld", max_new_tokens=24)
    s = out.stats
    assert s.new_tokens == len(out.token_ids) > 1
    assert sum(s.acceptance_histogram.values()) == s.target_forwards - 1  # prefill has no draft
    assert sum((k + 1) * n for k, n in s.acceptance_histogram.items()) + 1 >= s.new_tokens
    assert math.isclose(s.draft_s + s.verify_s + s.other_s, s.total_s, rel_tol=1e-6)
    assert s.mean_accepted_tokens == s.new_tokens / s.target_forwards
