"""Sampling losslessness of every registered method under both samplers, driven by the registry.

Setup: a float64 Llama target with a vocabulary of 8 in which token 3 is EOS, temperature 0.8,
top-k 6 and top-p 0.9 (p and q have zeros and go through every filter). The prompt repeats a
phrase that contains EOS and the model's own likely tokens, so lookup drafters draft them.
Each method generates up to 6 tokens for N seeds; draft-model methods alternate between a far
draft (another random model: rejections, residuals, siblings) and a close one (the target plus
weight noise: long accepted runs, PEARL's post-verify rounds). Every sample is exact, so mixing
drafters changes nothing.

Oracle: the exact distribution of the first 6 tokens (ending at EOS), enumerated from the
target's logits and processed by this file's own numpy implementation of temperature, top-k and
top-p (not tokenforge's), so that a bug in SamplingParams cannot cancel out.

Statistic: Pearson's chi-square on the joint of tokens 1-3 and on the joint of tokens 4-6 (EOS
padding counts as a value), cells with expected count < 5 pooled. Bound: the chi-square quantile
at 1 - 5e-4 (Wilson-Hilferty), so a correct method fails with probability <= 1e-3 per method and
sampler; seeds are fixed, so outcomes are reproducible. Any sample the oracle gives probability
zero fails at once. Coverage checks: accepted paths of depth >= 3 occur, and EOS is accepted
inside a drafted path. Power: the same statistic rejects three realistic broken verifiers.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch

from tests.conftest import tiny_model
from tokenforge import generate
from tokenforge.decoding import engine, verify
from tokenforge.decoding.api import make_drafter
from tokenforge.decoding.drafters.draft_model import TreeDrafter
from tokenforge.decoding.registry import all_methods
from tokenforge.decoding.tree import TokenTree

VOCAB, EOS, LENGTH, N = 8, 3, 6, 900
PROMPT = [1, 2, 7, 3, 7, 5, 7, 7, 1, 2]
SAMPLING = dict(temperature=0.8, top_k=6, top_p=0.9)
WINDOWS = (slice(0, 3), slice(3, 6))
Z = 3.2905  # the normal quantile at 1 - 5e-4
METHODS = [m for m in all_methods() if m.build is not None]
SAMPLERS = ("gumbel", "rejection")


def processed(logits: np.ndarray) -> np.ndarray:
    """Temperature, top-k then top-p (keep the smallest most-likely set reaching top_p), in
    float64: an implementation independent of tokenforge's."""
    z = logits / SAMPLING["temperature"]
    order = np.argsort(-z)
    keep = np.zeros_like(z, dtype=bool)
    keep[order[: SAMPLING["top_k"]]] = True
    p = np.where(keep, np.exp(z - z.max()), 0.0)
    p /= p.sum()
    cumulative = 0.0
    for rank, token in enumerate(order):
        if rank > 0 and cumulative >= SAMPLING["top_p"]:
            p[token] = 0.0
        cumulative += p[token]
    return p / p.sum()


def exact_distribution(loaded, allowed=None) -> dict[tuple[int, ...], float]:
    """P(outcome) over the first LENGTH tokens; an outcome ending at EOS is padded with -1.
    `allowed(prefix)`: a guide's bool mask after `prefix` (the logits outside it are -inf)."""
    prefixes = list(itertools.product(range(VOCAB), repeat=LENGTH - 1))
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([PROMPT + list(x) for x in prefixes])).logits
    rows = logits[:, len(PROMPT) - 1:].double().numpy()
    table = {}  # prefix -> p(next | prefix), from the row that continues it
    for row, prefix in zip(rows, prefixes):
        for i in range(LENGTH):
            table.setdefault(prefix[:i], row[i])
    out: dict[tuple[int, ...], float] = {}

    def walk(prefix: tuple[int, ...], prob: float) -> None:
        if len(prefix) == LENGTH or (prefix and prefix[-1] == EOS):
            out[prefix + (-1,) * (LENGTH - len(prefix))] = prob
            return
        logits = table[prefix] if allowed is None else np.where(allowed(prefix), table[prefix],
                                                                  -np.inf)
        p = processed(logits)
        for token in np.flatnonzero(p):
            walk(prefix + (int(token),), prob * p[token])

    walk((), 1.0)
    return out


def marginal(dist: dict, window: slice) -> Counter:
    out: Counter = Counter()
    for seq, p in dist.items():
        out[seq[window]] += p
    return out


def chi_square(counts: Counter, expected: dict, n: int) -> tuple[float, float]:
    """(statistic, bound), cells with expected count < 5 pooled."""
    stat, pooled_obs, pooled_exp, cells = 0.0, 0, 0.0, 0
    for cell, p in expected.items():
        e = n * p
        if e < 5:
            pooled_obs, pooled_exp = pooled_obs + counts[cell], pooled_exp + e
        else:
            stat, cells = stat + (counts[cell] - e) ** 2 / e, cells + 1
    if pooled_exp > 0:
        stat, cells = stat + (pooled_obs - pooled_exp) ** 2 / pooled_exp, cells + 1
    df = cells - 1
    return stat, df * (1 - 2 / (9 * df) + Z * math.sqrt(2 / (9 * df))) ** 3


@pytest.fixture(scope="module")
def models():
    target = tiny_model("llama", vocab_size=VOCAB, seed=3, layers=1, hidden=16)
    target.model.generation_config.eos_token_id = EOS
    far = tiny_model("llama", vocab_size=VOCAB, seed=4, layers=1, hidden=16)
    close = tiny_model("llama", vocab_size=VOCAB, seed=3, layers=1, hidden=16)
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in close.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=noise, dtype=p.dtype))
    return target, [far, close], exact_distribution(target)


class Recorder:
    """Wraps Session.verify: counts accepted paths of depth >= 3 and EOS accepted as a draft."""

    def __init__(self, monkeypatch):
        self.deep = self.eos_inside = 0
        original = engine.Session.verify

        def recording(session, tree, logits, first_index):
            result = original(session, tree, logits, first_index)
            self.deep += len(result.path) >= 3
            self.eos_inside += EOS in result.tokens[: len(result.path)]
            return result

        monkeypatch.setattr(engine.Session, "verify", recording)


def sample(target, drafts, method_name: str, sampler: str, n: int = N, guide=None
           ) -> list[tuple]:
    method = next(m for m in METHODS if m.name == method_name)
    drafters = ([make_drafter(target, method.name, d) for d in drafts] if method.needs_draft
                else [make_drafter(target, method.name)])
    out = []
    for seed in range(n):
        ids = generate(target, PROMPT, drafter=drafters[seed % len(drafters)],
                       max_new_tokens=LENGTH, seed=seed, sampler=sampler, guide=guide,
                       **SAMPLING).token_ids
        out.append(tuple(ids) + (-1,) * (LENGTH - len(ids)))
    return out


def impossible(samples: list[tuple], exact: dict) -> list[tuple]:
    return [s for s in samples if exact.get(s, 0.0) == 0.0]


def statistics(samples: list[tuple], exact: dict) -> list[tuple[float, float]]:
    return [chi_square(Counter(s[w] for s in samples), marginal(exact, w), len(samples))
            for w in WINDOWS]


def rejected(samples: list[tuple], exact: dict) -> bool:
    """The suite's verdict: an impossible outcome, or a chi-square beyond its bound."""
    return bool(impossible(samples, exact)) or any(
        stat > bound for stat, bound in statistics(samples, exact))


def test_the_oracle_is_a_distribution_and_matches_tokenforges_processing(models):
    target, _, exact = models
    assert math.isclose(sum(exact.values()), 1.0, rel_tol=1e-9)
    from tokenforge.decoding.sampling import SamplingParams
    logits = torch.randn(5, VOCAB, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = SamplingParams(**SAMPLING).probs(logits).double().numpy()
    theirs = np.stack([processed(row) for row in logits.numpy()])
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_the_statistic_tells_the_draft_from_the_target(models):
    target, (far, _), exact = models
    want = marginal(exact, WINDOWS[0])
    from_draft = marginal(exact_distribution(far), WINDOWS[0])
    cells = {k: v for k, v in want.items() if N * v >= 5}
    noncentrality = N * sum((from_draft[k] - v) ** 2 / v for k, v in cells.items())
    assert noncentrality > 3 * chi_square(Counter(), want, N)[1]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("method", [m.name for m in METHODS])
def test_sampling_matches_the_target_distribution(models, monkeypatch, method, sampler):
    target, drafts, exact = models
    seen = Recorder(monkeypatch)
    samples = sample(target, drafts, method, sampler)
    never = impossible(samples, exact)
    assert not never, f"outcomes the target can never produce: {never[:3]}"
    for window, (stat, bound) in zip(WINDOWS, statistics(samples, exact)):
        assert stat < bound, f"tokens {window}: chi-square {stat:.1f} >= {bound:.1f}"
    assert seen.deep >= 5, f"only {seen.deep} accepted paths of depth >= 3"
    assert seen.eos_inside > 0, "EOS was never accepted inside a drafted path"


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_seeded_samples_are_the_same_for_every_method(models, sampler):
    """The gumbel sampler's output is a function of the seed and the target alone: every method
    returns vanilla's sample. (The rejection sampler's draws depend on the drafts.)"""
    target, drafts, _ = models
    reference = sample(target, drafts, "pld", sampler, n=40)
    same = [sample(target, drafts, m.name, sampler, n=40) == reference for m in METHODS]
    assert all(same) if sampler == "gumbel" else not all(same)


# power: realistic broken verifiers are rejected by the same statistic ----------------------

def broken_no_zeroing(tree, logits, sampler, masks=None):
    """Rejection sampling that forgets to zero p(x) after a deterministic draft is rejected."""
    params, gen = sampler.params, sampler.gen
    path, node = [], -1
    while True:
        p = params.probs(logits[node + 1].cpu())
        accepted = None
        for child in tree.children[node + 1]:
            if float(torch.rand((), generator=gen)) < p[tree.tokens[child]]:
                accepted = child
                break
        if accepted is None:
            return verify.VerifyResult(path, [tree.tokens[i] for i in path]
                                       + [verify.sample_from(p, gen)])
        path.append(accepted)
        node = accepted


def test_power_against_a_verifier_that_keeps_rejected_mass(models, monkeypatch):
    target, drafts, exact = models
    monkeypatch.setattr(verify, "verify_sampling", broken_no_zeroing)
    assert rejected(sample(target, drafts, "token-recycling", "rejection"), exact)


def test_power_against_siblings_verified_as_drawn_with_replacement(models, monkeypatch):
    target, drafts, exact = models
    original = TreeDrafter.tree
    monkeypatch.setattr(TreeDrafter, "tree", lambda self: TokenTree(
        original(self).tokens, original(self).parents, original(self).draft_probs, False))
    for method in ("rsd", "dyspec"):
        assert rejected(sample(target, drafts[:1], method, "rejection"), exact), method


def test_power_against_gumbel_noise_keyed_by_tree_depth(models, monkeypatch):
    """Noise keyed by depth within the step instead of sequence index: every step reuses the
    noise of the step before, so consecutive tokens are coupled."""
    target, drafts, exact = models
    original = verify.verify
    monkeypatch.setattr(engine, "verify", lambda tree, logits, sampler, first_index, masks: original(
        tree, logits, sampler, 0, masks))
    assert rejected(sample(target, drafts, "pld", "gumbel"), exact)
