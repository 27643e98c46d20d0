"""Lossless under a guide, for every registered method, driven by the registry.

A guide over token ids (`Rhythm`) exercises everything the engine does with one: it refuses a
third of the vocabulary at every position (so draft nodes are cut), forces a fixed chain after a
trigger token (forced tokens enter the tree without an acceptance test) and, in the greedy suite,
allows nothing after a given number of tokens (finish_reason "guide"). Guided speculative decoding
must give exactly guided plain decoding's ids (greedy, with the KV invariant checked) and its
distribution (sampling, both samplers, against an oracle that masks the target's logits itself).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tokenforge
from tests.conftest import prompts, tiny_model
from tests.test_lossless import METHODS, close_copy, drafters_for, kv_check
from tests.test_sampling import (
    LENGTH,
    PROMPT,
    SAMPLERS,
    exact_distribution,
    impossible,
    models,  # noqa: F401, F811 (a fixture)
    sample,
    statistics,
)
from tokenforge.decoding import engine
from tokenforge.decoding.backends import get_backend
from tokenforge.decoding.sampling import SamplingParams
from tokenforge.guides import AllOf, DenyTokens, Guide

NEW_TOKENS = 24


class Rhythm(Guide):
    """Token t may follow n consumed tokens when (t + n) % 3 != 0; after `trigger` the tokens
    `chain` are forced one by one; after `dead_after` tokens nothing is allowed."""

    name = "rhythm"

    def __init__(self, trigger: int, chain: list[int], dead_after: int | None = None):
        self.trigger, self.chain, self.dead_after = trigger, chain, dead_after

    def begin(self, prompt_ids, vocab_size):
        super().begin(prompt_ids, vocab_size)
        self.state: list[int] = []

    def _forcing(self) -> int | None:
        """The forced token now, if any: the chain continues after the last trigger."""
        for back in range(len(self.chain)):
            at = len(self.state) - 1 - back
            if at < 0 or self.state[at] != self.trigger or self.state[at + 1:] != self.chain[:back]:
                continue
            return self.chain[back]
        return None

    def allowed(self) -> torch.Tensor:
        n = len(self.state)
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        if self.dead_after is not None and n >= self.dead_after:
            return mask
        forced = self._forcing()
        if forced is not None:
            mask[forced] = True
            return mask
        mask[(torch.arange(self.vocab_size) + n) % 3 != 0] = True
        return mask

    def consume(self, token: int) -> bool:
        if not self.allowed()[token]:
            return False
        self.state.append(token)
        return True

    def rollback(self, k: int) -> None:
        if k:
            del self.state[-k:]


def guided_sequence_is_valid(guide: Guide, prompt: list[int], tokens: list[int], vocab: int) -> bool:
    guide.begin(prompt, vocab)
    return guide.accepts(tokens) == len(tokens)


@pytest.fixture(scope="module")
def llama():
    target = tiny_model("llama", eos=0)
    drafts = [tiny_model("llama", seed=1, hidden=16, layers=1), close_copy("llama", target)]
    cases = prompts(10, seed=2)
    guides = [Rhythm(trigger=c[-1], chain=[5, 6, 7], dead_after=18 if i % 3 == 0 else None)
              for i, c in enumerate(cases)]
    want = [tokenforge.generate(target, p, max_new_tokens=NEW_TOKENS, backend="transformers",
                                guide=g) for p, g in zip(cases, guides)]
    return target, drafts, cases, guides, want


def test_the_guided_reference_is_guided(llama):
    target, _, cases, guides, want = llama
    vocab = target.model.get_input_embeddings().num_embeddings
    for prompt, guide, out in zip(cases, guides, want):
        assert guided_sequence_is_valid(guide, prompt, out.token_ids, vocab)
    plain = tokenforge.generate(target, cases[1], max_new_tokens=NEW_TOKENS)
    assert plain.token_ids != want[1].token_ids  # the guide changes the output
    assert {o.stats.finish_reason for o in want} >= {"guide"}
    assert all(len(o.token_ids) == g.dead_after
               for o, g in zip(want, guides) if o.stats.finish_reason == "guide")
    assert sum(o.stats.guide["forced_tokens"] for o in want) > 0


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_guided_greedy_identity_and_kv_invariant(llama, method):
    target, drafts, cases, guides, want = llama
    drafters = drafters_for(method, target, drafts)
    backend = get_backend(target)
    accepted = pruned = forced = 0
    for i, (prompt, guide) in enumerate(zip(cases, guides)):
        out = engine.run(backend, target.tokenizer, prompt, drafters[i % len(drafters)],
                         SamplingParams(), NEW_TOKENS, target.context_length,
                         step_hook=kv_check(target) if i < 3 else None, guide=guide)
        assert out.token_ids == want[i].token_ids, f"prompt {i}"
        assert out.stats.finish_reason == want[i].stats.finish_reason
        hist = out.stats.acceptance_histogram
        accepted += sum(k * n for k, n in hist.items()) - out.stats.guide["forced_tokens"]
        pruned += out.stats.guide["pruned_nodes"]
        forced += out.stats.guide["forced_tokens"]
    assert accepted > 0, "no draft was accepted under the guide: the test would prove nothing"
    assert forced > 0
    if method.name != "pearl":  # PEARL drafts chains of the draft's own choices: rarely refused
        assert pruned > 0, "the guide never cut a draft node"


def test_forced_tokens_save_target_forwards(llama):
    target, _, cases, guides, want = llama
    for out in want:  # plain decoding: one forward per token (the prefill's too) but forced ones
        assert out.stats.target_forwards == out.stats.new_tokens - out.stats.guide["forced_tokens"]
    assert sum(out.stats.guide["forced_tokens"] for out in want) > 0
    assert {out.stats.finish_reason for out in want} >= {"guide", "eos"}


def test_guides_compose(llama):
    target, _, cases, _, _ = llama
    both = AllOf(Rhythm(trigger=-1, chain=[]), DenyTokens([4, 8, 10]))
    out = tokenforge.generate(target, cases[0], max_new_tokens=NEW_TOKENS, guide=both)
    assert not {4, 8, 10} & set(out.token_ids)
    rhythm = Rhythm(trigger=-1, chain=[])
    vocab = target.model.get_input_embeddings().num_embeddings
    assert guided_sequence_is_valid(rhythm, cases[0], out.token_ids, vocab)
    same = tokenforge.generate(target, cases[0], method="token-recycling",
                               max_new_tokens=NEW_TOKENS, guide=both)
    assert same.token_ids == out.token_ids


def test_a_guide_that_allows_nothing_at_once_gives_no_text(llama):
    target, _, cases, _, _ = llama
    out = tokenforge.generate(target, cases[0], max_new_tokens=8,
                              guide=Rhythm(trigger=-1, chain=[], dead_after=0))
    assert out.token_ids == [] and out.stats.finish_reason == "guide"


def test_logprobs_are_the_guided_distribution(llama):
    target, _, cases, _, _ = llama
    out = tokenforge.generate(target, cases[0], max_new_tokens=10, logprobs=5,
                              guide=Rhythm(trigger=-1, chain=[]))
    for i, scored in enumerate(out.logprobs):
        assert all((t + i) % 3 != 0 for t, _ in scored.top)  # i generated tokens before
        assert sum(np.exp(v) for _, v in scored.top) <= 1.0 + 1e-6


def test_a_guide_must_be_a_guide(llama):
    target, _, cases, _, _ = llama
    with pytest.raises(tokenforge.errors.InvalidOptionError, match="guide must be"):
        tokenforge.generate(target, cases[0], guide="json")


# sampling ---------------------------------------------------------------------------------

SAMPLING_TRIGGER, SAMPLING_CHAIN = 7, [2, 5]


def sampling_mask(prefix: tuple[int, ...]) -> np.ndarray:
    guide = Rhythm(SAMPLING_TRIGGER, SAMPLING_CHAIN)
    guide.begin(PROMPT, 8)
    assert guide.accepts(list(prefix)) == len(prefix)
    for token in prefix:
        guide.consume(token)
    return guide.allowed().numpy()


class DraftsAccepted:
    """Wraps Session.verify: counts accepted drafted tokens (not the guide's forced ones)."""

    def __init__(self, monkeypatch):
        self.drafted = 0
        original = engine.Session.verify

        def recording(session, tree, logits, first_index):
            result = original(session, tree, logits, first_index)
            self.drafted += max(0, len(result.path) - len(session.forced))
            return result

        monkeypatch.setattr(engine.Session, "verify", recording)


@pytest.fixture(scope="module")
def guided_models(models):  # noqa: F811 (the fixture imported above)
    target, drafts, _ = models
    return target, drafts, exact_distribution(target, sampling_mask)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("method", [m.name for m in METHODS])
def test_guided_sampling_matches_the_guided_distribution(guided_models, monkeypatch, method,
                                                         sampler):
    target, drafts, exact = guided_models
    seen = DraftsAccepted(monkeypatch)
    samples = sample(target, drafts, method, sampler, n=600,
                     guide=Rhythm(SAMPLING_TRIGGER, SAMPLING_CHAIN))
    never = impossible(samples, exact)
    assert not never, f"outcomes guided decoding can never produce: {never[:3]}"
    for window, (stat, bound) in zip((slice(0, 3), slice(3, LENGTH)), statistics(samples, exact)):
        assert stat < bound, f"tokens {window}: chi-square {stat:.1f} >= {bound:.1f}"
    assert seen.drafted > 10, f"only {seen.drafted} drafted (not forced) tokens were accepted"



class Only(Guide):
    """Allows a fixed set of tokens everywhere."""

    name = "only"

    def __init__(self, tokens: set[int]):
        self.tokens = tokens

    def begin(self, prompt_ids, vocab_size):
        super().begin(prompt_ids, vocab_size)
        self.mask = torch.zeros(vocab_size, dtype=torch.bool)
        self.mask[sorted(self.tokens)] = True

    def allowed(self) -> torch.Tensor:
        return self.mask.clone()

    def consume(self, token: int) -> bool:
        return bool(self.mask[token])

    def rollback(self, k: int) -> None:
        """Nothing to undo."""


def test_adaptive_sps_treats_a_chain_the_guide_cut_as_rejected(llama, monkeypatch):
    """A chain the guide cuts is not a fully accepted one: adaptive gamma must not grow on it."""
    from tokenforge.decoding.api import make_drafter
    from tokenforge.decoding.drafters.draft_model import SpS

    target, drafts, cases, _, _ = llama
    drafter = make_drafter(target, "sps", drafts[1], adaptive=True)
    gammas: list[int] = []
    original = SpS.feedback

    def recording(self, tree, logits, result):
        original(self, tree, logits, result)
        gammas.append(self.gamma)

    monkeypatch.setattr(SpS, "feedback", recording)
    out = tokenforge.generate(target, cases[0], drafter=drafter, max_new_tokens=24,
                              guide=Only({1, 2, 3}))
    assert set(out.token_ids) <= {1, 2, 3} and out.stats.guide["pruned_nodes"] > 0
    assert gammas and max(gammas) <= 5, gammas


def test_guided_generations_leave_token_recyclings_size_search_alone(llama, monkeypatch,
                                                                     tmp_path):
    """A guide cuts drafts, so guided steps must not teach tree_size=auto (it is stored per model
    and would carry into unguided generations)."""
    from tokenforge.decoding.api import make_drafter

    # a store of its own: an earlier test in this process may have stored an exploration of the
    # same model, which this drafter would carry on from
    monkeypatch.setenv("TOKENFORGE_CACHE_DIR", str(tmp_path))
    target, _, cases, _, _ = llama
    drafter = make_drafter(target, "token-recycling")
    tokenforge.generate(target, cases[0], drafter=drafter, max_new_tokens=24,
                        guide=Rhythm(trigger=-1, chain=[]))
    assert drafter.explored == 0
    tokenforge.generate(target, cases[0], drafter=drafter, max_new_tokens=24)
    assert drafter.explored > 0
