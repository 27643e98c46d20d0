"""Sampling with sps, dyspec, rsd (both variants) and pearl yields exactly the target's distribution.

Setup: a float64 Llama target with vocabulary 8, temperature 0.7 and top-k 4 (so p and q have
zeros and go through the same filtering). Each method generates 5 tokens for N = 800 seeds: the
first from the prefill, the rest through draft trees up to depth 3 (siblings, residuals, deeper
levels, the bonus and PEARL's post-verify rounds all take part). The tree methods and sps use a
far draft (another random model: many rejections), PEARL a close one (the target plus weight
noise: its post-verify rounds need accepted runs). The exact distribution of the first four
tokens comes from the target's processed probabilities (SamplingParams.probs) by enumeration.

Statistic: Pearson's chi-square, on the joint of tokens 1-3 and on the joint of tokens 3-4, with
cells of expected count < 5 pooled into one. Bound: the chi-square quantile at 1 - 5e-4 for
(cells - 1) degrees of freedom (Wilson-Hilferty approximation), so a correct method fails with
probability <= 1e-3 (two statistics) and the file with <= 0.5%; the seeds are fixed, so the
outcome is reproducible. Power, checked by hand with these settings (statistic / bound): trees
verified as if siblings were drawn with replacement: rsd-c 175/55, rsd-s 179/55, dyspec 95/55;
sps drafting from q^2 while reporting q: 160/55; PEARL checking E0 against the previous target
row: 372/46. The first test checks that plain sampling from the far draft would fail.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch
from conftest import tiny_model

from tokenforge import generate, make_drafter
from tokenforge.decoding.sampling import SamplingParams

VOCAB, N, PROMPT, Z = 8, 800, [1, 2, 3], 3.2905  # z of the normal at 1 - 5e-4
SAMPLING = dict(temperature=0.7, top_k=4)
WINDOWS = (slice(0, 3), slice(2, 4))  # tokens 1-3 and tokens 3-4
METHODS = [
    ("sps", {"gamma": 2}, "far"),
    ("dyspec", {"budget": 6, "width": 2}, "far"),
    ("rsd", {"variant": "c", "branches": "3,2"}, "far"),
    ("rsd", {"variant": "s", "beam": 3}, "far"),
    ("pearl", {"gamma": 2}, "close"),
]


def exact_distribution(loaded, length: int = 4) -> dict[tuple[int, ...], float]:
    """P(t1..t_length) of plain sampling, from one batched forward over every prefix."""
    prefixes = list(itertools.product(range(VOCAB), repeat=length - 1))
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([PROMPT + list(x) for x in prefixes])).logits
    probs = SamplingParams(**SAMPLING).probs(logits[:, len(PROMPT) - 1 :]).tolist()
    out = {}
    for row, prefix in zip(probs, prefixes):
        head = math.prod(row[i][t] for i, t in enumerate(prefix))
        for last in range(VOCAB):
            out[prefix + (last,)] = head * row[length - 1][last]
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
    """The target, a far draft (another random model: many rejections, for the tree residuals)
    and a close one (the target plus weight noise: long accepted runs, for PEARL's rounds)."""
    target = tiny_model("llama", vocab_size=VOCAB, seed=3, layers=1, hidden=16)
    target.model.generation_config.eos_token_id = []  # no EOS: every sample has five tokens
    far = tiny_model("llama", vocab_size=VOCAB, seed=4, layers=1, hidden=16)
    close = tiny_model("llama", vocab_size=VOCAB, seed=3, layers=1, hidden=16)
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in close.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=noise, dtype=p.dtype))
    return target, {"far": far, "close": close}, exact_distribution(target)


def test_the_statistic_tells_the_draft_from_the_target(models):
    target, drafts, exact = models
    want = marginal(exact, WINDOWS[0])
    from_draft = marginal(exact_distribution(drafts["far"]), WINDOWS[0])
    cells = {k: v for k, v in want.items() if N * v >= 5}
    noncentrality = N * sum((from_draft[k] - v) ** 2 / v for k, v in cells.items())
    assert noncentrality > 3 * chi_square(Counter(), want, N)[1]


@pytest.mark.parametrize("method,options,draft", METHODS, ids=[f"{m}-{o}" for m, o, _ in METHODS])
def test_sampling_matches_the_target_distribution(models, method, options, draft):
    target, drafts, exact = models
    drafter = make_drafter(target, method, drafts[draft], **options)
    samples = [tuple(generate(target, PROMPT, drafter=drafter, max_new_tokens=5, seed=seed,
                              **SAMPLING).token_ids) for seed in range(N)]
    for window in WINDOWS:
        stat, bound = chi_square(Counter(s[window] for s in samples), marginal(exact, window), N)
        assert stat < bound, f"{method}, tokens {window}: chi-square {stat:.1f} >= {bound:.1f}"
