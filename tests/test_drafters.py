"""Unit behaviour of the training-free drafters: PLD matching, Token Recycling's matrix,
templates and tree-size search, ADED's table and search."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tokenforge
from tests.conftest import prompts, tiny_model
from tokenforge.decoding.api import make_drafter
from tokenforge.decoding.drafters.aded import NgramTable
from tokenforge.decoding.drafters.pld import PLDOptions, PromptLookup, match_starts, trie
from tokenforge.decoding.drafters.token_recycling import (
    TEMPLATE_DIR,
    TokenRecycling,
    TokenRecyclingOptions,
    build_template,
    load_template,
)
from tokenforge.decoding.tree import TokenTree
from tokenforge.errors import InvalidOptionError


def test_pld_drafts_the_continuation_of_the_latest_match():
    tokens = [5, 6, 7, 1, 5, 6, 8, 2, 9, 5, 6]
    assert match_starts(np.array(tokens), 2).tolist() == [0, 4]
    tree = PromptLookup(PLDOptions(num_draft=3)).propose(tokens, max_depth=10)
    assert tree.tokens == [8, 2, 9] and tree.is_chain  # from the match at 4, not at 0
    both = PromptLookup(PLDOptions(num_draft=2, num_matches=2)).propose(tokens, max_depth=10)
    assert both.tokens == [8, 2, 7, 1] and both.parents == [-1, 0, -1, 2]
    assert PromptLookup().propose([1, 2, 3], max_depth=10).tokens == []
    assert PromptLookup(PLDOptions(num_draft=10)).propose(tokens, max_depth=2).tokens == [8, 2]


def test_trie_merges_common_prefixes():
    tree = trie([[1, 2, 3], [1, 2, 4], [5]])
    assert tree.tokens == [1, 2, 3, 4, 5] and tree.parents == [-1, 0, 1, 1, -1]


def test_templates_are_valid_trees_with_the_papers_profile():
    for path in TEMPLATE_DIR.glob("*.json"):
        data = json.loads(path.read_text())
        nodes = load_template(path.stem)
        tree = TokenTree([0] * len(nodes), [p for p, _ in nodes])  # validates parent order
        widths = [tree.depths.count(d) for d in range(1, max(tree.depths) + 1)]
        assert widths == data["widths"]
    assert len(load_template("paper-80")) == 80
    # best-first by prior: 0.55 * 0.55 (rank 0 under rank 0) beats 0.15 (rank 1 at the root)
    assert build_template([2, 1], k=3) == [(-1, 0), (0, 0), (-1, 1)]
    with pytest.raises(InvalidOptionError, match="unknown token-recycling template"):
        load_template("nope")


def test_matrix_fits_2mb_at_32k_vocab_and_round_trips(tmp_path):
    loaded = tiny_model("llama", vocab_size=32000, hidden=8, layers=1)
    drafter = TokenRecycling(loaded)
    assert drafter.matrix.nbytes <= 2 * 1024 * 1024
    drafter.matrix[7] = np.arange(8)
    drafter.save_matrix(tmp_path / "m.npy")
    other = tiny_model("llama", vocab_size=32000, hidden=8, layers=1, seed=1)
    reloaded = TokenRecycling(other, TokenRecyclingOptions(matrix=str(tmp_path / "m.npy")))
    assert reloaded.matrix[7].tolist() == list(range(8))
    wrong = tiny_model("llama", vocab_size=64)
    with pytest.raises(InvalidOptionError, match="shape"):
        TokenRecycling(wrong, TokenRecyclingOptions(matrix=str(tmp_path / "m.npy")))


def test_matrix_is_recycled_and_persists_across_generations():
    loaded = tiny_model("qwen2", seed=4)
    prompt = prompts(1, seed=4)[0]
    drafter = make_drafter(loaded, "token-recycling", tree_size="80")
    first = tokenforge.generate(loaded, prompt, max_new_tokens=40, drafter=drafter)
    assert (drafter.matrix[first.token_ids[:-1]] >= 0).all()  # every committed token was a node
    again = tokenforge.generate(loaded, prompt, max_new_tokens=40, drafter=drafter)
    assert again.token_ids == first.token_ids
    assert again.stats.target_forwards < first.stats.target_forwards  # warm matrix drafts better
    fresh = make_drafter(loaded, "token-recycling", tree_size="80")
    assert (fresh.matrix == -1).all()  # state lives in the drafter, not in the process


def test_auto_tree_size_measures_costs_then_chooses(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENFORGE_CACHE_DIR", str(tmp_path))
    loaded = tiny_model("llama", seed=6)
    drafter = make_drafter(loaded, "token-recycling", explore_steps=5)
    for prompt in prompts(4, seed=6):
        tokenforge.generate(loaded, prompt, max_new_tokens=30, drafter=drafter)
    assert drafter.chosen_size in drafter.sizes
    costs = drafter.costs.seconds
    assert set(costs) == set(drafter.sizes) and min(costs.values()) > 0
    # a prefix never accepts more than the full template
    assert all(drafter.accepted_by_size[n] <= drafter.accepted_by_size[80] for n in drafter.sizes)
    # a new drafter (or process) starts from the stored calibration: no measuring, no exploring
    again = make_drafter(loaded, "token-recycling", explore_steps=5)
    tokenforge.generate(loaded, prompts(1, seed=7)[0], max_new_tokens=4, drafter=again)
    assert again.chosen_size == drafter.chosen_size and again.explored == drafter.explored
    assert again.costs.seconds == costs
    fresh = make_drafter(loaded, "token-recycling", explore_steps=5, calibrate=True)
    tokenforge.generate(loaded, prompts(1, seed=7)[0], max_new_tokens=4, drafter=fresh)
    assert fresh.chosen_size is None and fresh.costs.seconds != costs  # measured again


def test_a_short_exploration_is_carried_on_by_the_next_process(tmp_path, monkeypatch):
    """Generations shorter than the exploration store it when they finish; a new drafter (as in
    a new process) carries it on from there instead of measuring and exploring again."""
    monkeypatch.setenv("TOKENFORGE_CACHE_DIR", str(tmp_path))
    loaded = tiny_model("llama", seed=6)
    prompt = prompts(2, seed=6)[1]
    explored = []
    for _ in range(12):
        drafter = make_drafter(loaded, "token-recycling", explore_steps=6)
        tokenforge.generate(loaded, prompt, max_new_tokens=6, drafter=drafter)
        explored.append(drafter.explored)
        if drafter.chosen_size is not None:
            break
    assert explored == sorted(explored) and explored[0] < 6 <= explored[-1]
    assert drafter.chosen_size is not None and len(explored) > 1


def test_token_recycling_rejects_bad_options():
    loaded = tiny_model("llama")
    with pytest.raises(InvalidOptionError, match="tree_size"):
        make_drafter(loaded, "token-recycling", tree_size="lots")
    with pytest.raises(InvalidOptionError, match="raise k"):
        make_drafter(loaded, "token-recycling", k=4)


def test_ngram_table_prefers_trigrams_and_falls_back_to_bigrams():
    table = NgramTable()
    table.observe([1, 2, 3, 1, 2, 3, 1, 2, 4, 9, 2, 5])
    assert table.continuations(1, 2, 2) == [(3, 2 / 3), (4, 1 / 3)]
    assert [t for t, _ in table.continuations(7, 2, 3)] == [3, 4, 5]  # unseen pair: bigram
    assert table.continuations(7, 8, 3) == []


def test_aded_search_drafts_the_frequent_path():
    loaded = tiny_model("llama")
    drafter = make_drafter(loaded, "aded", depth=3)
    drafter.begin([1, 2, 3, 4] * 5, target=None)
    tree = drafter.propose([9, 1, 2, 3, 4, 1], max_depth=5)
    assert tree.tokens[:3] == [2, 3, 4] and tree.parents[:3] == [-1, 0, 1]
    assert max(tree.depths) <= 3
