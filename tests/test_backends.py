"""Backends: the static fast path against transformers' own forward, tree forwards, keeping a
path, growing the cache, the padded static-shape step CUDA graphs capture, and the fallback."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import tokenforge
from tests.conftest import ALL_FAMILIES, prompts, tiny_model
from tokenforge.decoding.backends import new_backend
from tokenforge.decoding.backends.static import StaticBackend, unsupported_reason
from tokenforge.decoding.tree import TokenTree

STATIC_FAMILIES = [f for f in ALL_FAMILIES if unsupported_reason(tiny_model(f).model) is None]
TREE = TokenTree([7, 8, 9, 10, 11], [-1, -1, 0, 2, 1])  # root -> (7 -> 9 -> 10), (8 -> 11)


def full_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0]


def tree_forward(backend, prefix: list[int], tree: TokenTree) -> torch.Tensor:
    """Prefill prefix[:-1], then one forward over [root] + tree; returns its logits."""
    backend.begin(64)
    backend.forward(prefix[:-1])
    return backend.forward([prefix[-1]] + tree.tokens, positions=backend.length + tree.offsets(),
                           mask=tree.block_mask())


def test_static_families_cover_the_llama_family():
    assert {"llama", "qwen2", "mistral", "gemma"} <= set(STATIC_FAMILIES)
    assert "gpt2" not in STATIC_FAMILIES and "phi3" not in STATIC_FAMILIES


@pytest.mark.parametrize("family", STATIC_FAMILIES)
def test_static_forward_matches_transformers(family):
    """Prefill, chain steps and a tree: every row equals transformers' full-sequence logits."""
    loaded = tiny_model(family)
    backend = StaticBackend(loaded.model)
    ids = prompts(2, seed=3)[1]
    with torch.inference_mode():
        backend.begin(64)
        first = backend.forward(ids[:5])
        torch.testing.assert_close(first, full_logits(loaded.model, ids[:5]))
        for i in range(5, len(ids)):
            step = backend.forward([ids[i]])
            torch.testing.assert_close(step[0], full_logits(loaded.model, ids[: i + 1])[-1])
        last = backend.forward([3, 4], last_only=True)
        torch.testing.assert_close(last[0], full_logits(loaded.model, ids + [3, 4])[-1])


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_tree_forward_matches_sequential_logits(family):
    """Every root-to-node path of a tree forward gets the logits a plain forward gives it."""
    loaded = tiny_model(family)
    prefix = [3, 4, 5, 6]
    with torch.inference_mode():
        logits = tree_forward(new_backend(loaded.model), prefix, TREE)
    for node in range(len(TREE)):
        seq = prefix + [TREE.tokens[i] for i in TREE.path_to(node)]
        torch.testing.assert_close(logits[node + 1], full_logits(loaded.model, seq)[-1])


@pytest.mark.parametrize("kind", ["static", "transformers"])
def test_keep_moves_the_accepted_path_into_place(kind):
    loaded = tiny_model("llama")
    backend = new_backend(loaded.model, kind)
    prefix = [3, 4, 5, 6]
    with torch.inference_mode():
        tree_forward(backend, prefix, TREE)
        backend.keep(len(prefix) - 1, [0, 1, 3])  # root, 7, 9 (rows = node + 1)
        committed = prefix + [7, 9]
        fresh = new_backend(loaded.model, "transformers")
        fresh.begin(64)
        fresh.forward(committed)
    assert backend.length == len(committed)
    for (k, v), (k_ref, v_ref) in zip(backend.layer_kv(), fresh.layer_kv()):
        torch.testing.assert_close(k, k_ref)
        torch.testing.assert_close(v, v_ref)
    with torch.inference_mode():  # decoding carries on from the kept path
        torch.testing.assert_close(backend.forward([10])[0],
                                   full_logits(loaded.model, committed + [10])[-1])


def test_cache_grows_and_keeps_its_contents():
    loaded = tiny_model("qwen2")
    backend = StaticBackend(loaded.model)
    ids = (prompts(4, seed=5)[1] * 40)[:300]
    with torch.inference_mode():
        backend.begin(8)
        backend.forward(ids[:200])
        small = backend.capacity
        out = backend.forward(ids[200:])
    assert backend.capacity > small >= 200
    torch.testing.assert_close(out[-1], full_logits(loaded.model, ids)[-1])


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_padded_bucket_step_matches_the_eager_step(family):
    """The static-shape step CUDA graphs capture (tokens padded to a bucket, attention over the
    whole buffer with a mask, padded rows writing scratch slots; projections unfused, as on a
    GPU) runs eagerly off CUDA: its logits equal the eager path's, trees and keeps included."""
    loaded = tiny_model(family)
    eager = StaticBackend(loaded.model)
    padded = StaticBackend(loaded.model, graphs=True, fuse=False)
    prefix = [3, 4, 5, 6, 7, 8]
    with torch.inference_mode():
        for backend in (eager, padded):
            tree_forward(backend, prefix, TREE)
            backend.keep(len(prefix) - 1, [0, 1, 3])
        a, b = eager.forward([11, 12, 13]), padded.forward([11, 12, 13])
    assert padded.describe().endswith("padded buckets")
    torch.testing.assert_close(a, b)
    for (k, _), (k_ref, _) in zip(padded.layer_kv(), eager.layer_kv()):
        torch.testing.assert_close(k, k_ref)


def test_float32_packed_weights_match_transformers():
    """On the CPU, float32 linear layers run through oneDNN with prepacked weights; logits stay
    within float32 rounding of transformers' and greedy outputs are identical."""
    loaded = tiny_model("llama", eos=0)
    loaded.model.float()
    backend = StaticBackend(loaded.model)
    if torch.backends.mkldnn.is_available():
        assert "oneDNN packed weights" in backend.describe()
    ids = (prompts(2, seed=1)[1] * 20)[:300]  # a prefill in slices of 128 rows, the last padded
    with torch.inference_mode():
        backend.begin(320)
        out = backend.forward(ids[:295])
        five = backend.forward(ids[295:])  # 5 rows, padded to a bucket of 6
    torch.testing.assert_close(out, full_logits(loaded.model, ids[:295]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(five, full_logits(loaded.model, ids)[295:], rtol=1e-4, atol=1e-4)
    for prompt in prompts(8, seed=2):
        fast = tokenforge.generate(loaded, prompt, max_new_tokens=20)
        slow = tokenforge.generate(loaded, prompt, max_new_tokens=20, backend="transformers")
        assert fast.token_ids == slow.token_ids


def test_bfloat16_weights_keep_float32_activations():
    loaded = tiny_model("llama")
    loaded.model.to(torch.bfloat16)
    backend = StaticBackend(loaded.model)
    assert backend.act_dtype == torch.float32
    with torch.inference_mode():
        backend.begin(16)
        logits = backend.forward([1, 2, 3])
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_unsupported_models_fall_back_and_say_so_once(caplog):
    loaded = tiny_model("gpt2", seed=11)
    with caplog.at_level(logging.WARNING, logger="tokenforge"):
        first = new_backend(loaded.model)
        second = new_backend(loaded.model)
    assert first.name == second.name == "transformers"
    notes = [r for r in caplog.records if "fast path does not support GPT2LMHeadModel" in r.message]
    assert len(notes) <= 1  # once per process (an earlier test may already have said it)
    from tokenforge.errors import InvalidOptionError
    with pytest.raises(InvalidOptionError, match="static backend cannot run"):
        new_backend(loaded.model, "static")


def test_full_mask_and_positions_of_a_tree():
    mask = TREE.block_mask()
    assert mask.astype(int).tolist() == [[1, 0, 0, 0, 0, 0],
                                         [1, 1, 0, 0, 0, 0],
                                         [1, 0, 1, 0, 0, 0],
                                         [1, 1, 0, 1, 0, 0],
                                         [1, 1, 0, 1, 1, 0],
                                         [1, 0, 1, 0, 0, 1]]
    assert TREE.offsets().tolist() == [0, 1, 1, 2, 3, 2]
    from tokenforge.decoding.backends.base import full_mask
    causal = full_mask(3, 2, None)
    assert causal.astype(int).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert np.array_equal(full_mask(6, 4, mask)[:, 4:], mask)
