"""The search decoders (decoding/strategies): PrefixLM's KV reuse, AdaDec (greedy at threshold
inf, its lookahead tree against a naive per-branch computation, the threshold fit) and PG-TD
(finding a non-greedy program, reward caching, terminal nodes, the anytime trace)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tokenforge
from tests.conftest import prompts, tiny_model
from tokenforge.decoding.strategies import (
    AdaDecOptions,
    PGTDOptions,
    PrefixLM,
    StopRule,
    ThresholdFit,
    adadec,
    fit_threshold,
    pg_td,
)
from tokenforge.decoding.strategies.adadec import (
    balanced_cut,
    choose_threshold,
    fit_logistic,
    rerank,
)
from tokenforge.decoding.strategies.pg_td import PGTD, Node
from tokenforge.errors import InvalidOptionError

PROMPT = [5, 17, 33, 2, 9]


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def full_logits(loaded, seq: list[int]) -> torch.Tensor:
    """Next-token logits after `seq` from a plain forward of the whole sequence, no cache."""
    with torch.inference_mode():
        return loaded.model(torch.tensor([seq])).logits[0, -1]


def completion_after(lm: PrefixLM, rule: StopRule, tokens: list[int]):
    done = lm.completion(rule, len(PROMPT))
    for token in tokens:
        done.add(token)
    return done


# -- PrefixLM ---------------------------------------------------------------------------------

def test_prefix_lm_reuses_the_cache_exactly(tiny):  # static and transformers backends
    loaded = tiny
    lm = PrefixLM(loaded, 128)
    gen = torch.Generator().manual_seed(1)
    seq = torch.randint(1, 96, (6,), generator=gen).tolist()
    steps = [("prefix", seq)]
    steps.append(("extension", seq + [7, 8, 9]))
    steps.append(("same", seq + [7, 8, 9]))
    steps.append(("strict prefix", seq + [7]))
    steps.append(("branch", seq + [7, 40, 41, 42]))
    steps.append(("unrelated", torch.randint(1, 96, (9,), generator=gen).tolist()))
    steps.append(("one token", [3]))
    steps.append(("longer again", [3, 4, 5, 6]))
    cached: list[int] = []
    for name, current in steps:
        before = lm.tokens_forwarded
        got = lm.logits(current)
        assert got.dtype == torch.float32 and got.shape == (96,)
        torch.testing.assert_close(got, full_logits(loaded, current).float(), atol=1e-5, rtol=0,
                                   msg=name)
        common = 0
        while common < min(len(cached), len(current)) and cached[common] == current[common]:
            common += 1
        expected = 0 if current == cached else len(current) - min(common, len(current) - 1)
        assert lm.tokens_forwarded - before == expected, name
        cached = current
    assert lm.backend.length == len(cached)


# -- AdaDec -----------------------------------------------------------------------------------

def test_adadec_at_threshold_inf_is_greedy_on_demo(demo):
    rule = StopRule(max_new_tokens=40)
    for prompt in ["def add(a, b):\n    ", "class Stack:\n    def push(self, item):\n        ",
                   "def add(a, b):\n"]:  # the last one stops at once on "\ndef "
        plain = tokenforge.generate(demo, prompt, max_new_tokens=40, stop=list(rule.stop_strings))
        ours = adadec(demo, prompt, rule, AdaDecOptions(), math.inf)
        assert ours.token_ids == plain.token_ids, prompt
        assert ours.text == plain.text, prompt
        assert ours.stats["finish_reason"] == plain.stats.finish_reason
        assert ours.target_forwards == plain.stats.target_forwards
        assert ours.stats["pauses"] == 0


def test_adadec_at_threshold_inf_is_greedy_on_tiny_models(tiny):
    loaded = tiny
    for stops in [(), ("w1",)]:  # "w1" ends a completion at any of w1, w10..w19
        rule = StopRule(max_new_tokens=24, stop_strings=stops)
        for prompt in prompts(3, seed=4):
            plain = tokenforge.generate(loaded, prompt, max_new_tokens=24, stop=list(stops) or None)
            ours = adadec(loaded, prompt, rule, AdaDecOptions(), math.inf)
            assert ours.token_ids == plain.token_ids
            assert ours.text == plain.text


def naive_candidates(loaded, lm: PrefixLM, rule: StopRule, committed: list[int],
                     options: AdaDecOptions) -> list[tuple[int, list[int], float]]:
    """(token, lookahead, score) per candidate, each branch recomputed from scratch with full
    forwards of prompt + committed + branch."""
    logp = torch.log_softmax(full_logits(loaded, PROMPT + committed), -1)
    out = []
    for token in torch.topk(logp, options.beam).indices.tolist():
        scores = [float(logp[token])]
        branch = [token]
        done = completion_after(lm, rule, committed + [token]).finished
        while not done and len(branch) <= options.lookahead:
            row = torch.log_softmax(full_logits(loaded, PROMPT + committed + branch), -1)
            nxt = int(row.argmax())
            scores.append(float(row[nxt]))
            branch.append(nxt)
            done = completion_after(lm, rule, committed + branch).finished
        out.append((token, branch[1:], sum(scores) / len(scores)))
    return out


@pytest.mark.parametrize("stops", [(), ("w3",)])  # "w3" ends some branches early
def test_adadec_lookahead_tree_matches_naive_branches(llama, stops):
    options = AdaDecOptions(beam=3, lookahead=4)
    rule = StopRule(max_new_tokens=12, stop_strings=stops)
    run = adadec(llama, PROMPT, rule, options, threshold=0.0)
    assert run.stats["pauses"] == len(run.token_ids)  # threshold 0: every step pauses
    assert run.target_forwards == len(run.token_ids) + run.stats["lookahead_forwards"]
    assert run.stats["lookahead_forwards"] <= options.lookahead * run.stats["pauses"]

    lm = PrefixLM(llama, 64)
    depths = []
    cut_short = 0
    for end in range(len(run.token_ids)):
        committed = run.token_ids[:end]
        lm.next_logits(PROMPT + committed)
        before_forwards, before_tokens = lm.forwards, lm.tokens_forwarded
        got = rerank(lm, PROMPT + committed, completion_after(lm, rule, committed), options)
        want = naive_candidates(llama, lm, rule, committed, options)
        assert [(c.token, c.lookahead) for c in got] == [(t, la) for t, la, _ in want]
        for cand, (_, _, score) in zip(got, want):
            assert abs(cand.score - score) < 1e-4
        # one forward per depth, of at most B tokens: the tree, not B separate chains
        forwards = lm.forwards - before_forwards
        assert forwards == max(len(c.lookahead) for c in got)
        assert lm.tokens_forwarded - before_tokens == sum(len(c.lookahead) for c in got)
        depths.append(forwards)
        cut_short += sum(len(c.lookahead) < options.lookahead for c in got)
        assert lm.backend.length == len(PROMPT + committed)  # the tree was cropped away
        # AdaDec committed the best-scoring candidate (ties: the more likely one)
        assert run.token_ids[end] == max(got, key=lambda c: c.score).token
    assert options.lookahead in depths
    if stops:
        assert cut_short > 0  # the stop string did end some branches early


def test_adadec_pauses_exactly_where_the_entropy_reaches_the_threshold(llama):
    rule = StopRule(max_new_tokens=16, stop_strings=())
    greedy = adadec(llama, PROMPT, rule, AdaDecOptions(), math.inf)

    def entropies(tokens):
        out = []
        for i in range(len(tokens)):
            logp = torch.log_softmax(full_logits(llama, PROMPT + tokens[:i]).double(), -1)
            out.append(float(-(logp.exp() * logp).sum()))
        return out

    threshold = float(np.median(entropies(greedy.token_ids)))
    run = adadec(llama, PROMPT, rule, AdaDecOptions(), threshold)
    h = entropies(run.token_ids)
    assert 0 < run.stats["pauses"] == sum(x >= threshold for x in h) < len(h)
    assert sum(run.stats["entropy_histogram"].values()) == len(h)
    for i in run.stats["changed_at"]:  # a rerank changed the greedy token there
        assert h[i] >= threshold
        assert run.token_ids[i] != int(full_logits(llama, PROMPT + run.token_ids[:i]).argmax())
    # where no pause happened the token is the greedy one
    for i, x in enumerate(h):
        if x < threshold:
            assert run.token_ids[i] == int(full_logits(llama, PROMPT + run.token_ids[:i]).argmax())


def test_fit_logistic_recovers_a_known_threshold():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 3, 40_000)
    y = rng.random(x.shape) < 1 / (1 + np.exp(-4 * (x - 1.2)))
    coef, intercept = fit_logistic(x, y, l2=0.0)
    assert abs(coef - 4) < 0.3 and abs(-intercept / coef - 1.2) < 0.03
    # balanced classes (uniform entropies around the crossing): the threshold is the crossing
    y = rng.random(x.shape) < 1 / (1 + np.exp(-3 * (x - 1.5)))
    threshold, coef, _, rule = choose_threshold(x, y)
    assert abs(threshold - 1.5) < 0.05 and coef > 0 and rule.startswith("logistic")


def test_choose_threshold_corner_cases():
    h = np.array([0.1, 0.5, 0.9, 1.3, 2.0])
    assert choose_threshold(h, np.zeros(5, bool))[0] == math.inf
    assert choose_threshold(h, np.ones(5, bool))[0] == 0.0
    # disagreement at LOW entropy: no P = 0.5 crossing with a positive slope -> the fallback
    rng = np.random.default_rng(1)
    h = rng.uniform(0, 3, 400)
    d = h < 1.0
    threshold, coef, _, rule = choose_threshold(h, d)
    assert coef < 0 and rule.startswith("fallback")
    assert threshold == balanced_cut(h, d)
    best = max(0.5 * ((d & (h >= t)).sum() / d.sum() + (~d & (h < t)).sum() / (~d).sum())
               for t in h)
    got = 0.5 * ((d & (h >= threshold)).sum() / d.sum() + (~d & (h < threshold)).sum() / (~d).sum())
    assert got == best


def test_fit_threshold_end_to_end(llama, tmp_path):
    pairs = []
    expected_h, expected_d = [], []
    gen = torch.Generator().manual_seed(3)
    for prompt in prompts(4, seed=2):
        reference = []  # the greedy continuation with every third token replaced
        for j in range(12):
            token = int(full_logits(llama, prompt + reference).argmax())
            reference.append(int(torch.randint(1, 96, (1,), generator=gen)) if j % 3 == 2 else token)
        pair = (" ".join(f"w{t}" for t in prompt), " ".join(f"w{t}" for t in reference))
        pairs.append(pair)
        ids, ref = (llama.tokenizer(text, add_special_tokens=False)["input_ids"] for text in pair)
        for j, token in enumerate(ref):
            logits = full_logits(llama, ids + ref[:j]).double()
            logp = torch.log_softmax(logits, -1)
            expected_h.append(float(-(logp.exp() * logp).sum()))
            expected_d.append(int(logits.argmax()) != token)
    fit = fit_threshold(llama, pairs)
    assert fit.n_positions == len(expected_d) and fit.model == llama.name
    assert fit.disagreement_rate == pytest.approx(np.mean(expected_d))
    assert 0 < fit.disagreement_rate < 1
    threshold, coef, intercept, rule = choose_threshold(np.array(expected_h), np.array(expected_d))
    assert fit.threshold == pytest.approx(threshold, abs=1e-6) and fit.rule == rule
    assert fit.coef == pytest.approx(coef, abs=1e-6)
    fit.save(tmp_path / "fit.json")
    assert ThresholdFit.load(tmp_path / "fit.json") == fit
    never = ThresholdFit(math.inf, None, None, 3, 0.0, "m", "never")
    never.save(tmp_path / "never.json")
    assert ThresholdFit.load(tmp_path / "never.json").threshold == math.inf


# -- PG-TD ------------------------------------------------------------------------------------

def branch_text(loaded, rule: StopRule, forced: list[int]) -> str:
    """The greedy completion after the forced tokens."""
    lm = PrefixLM(loaded, 64)
    return lm.greedy(PROMPT + forced, completion_after(lm, rule, forced)).text()


def test_pg_td_finds_a_program_greedy_misses(llama):
    rule = StopRule(max_new_tokens=6, stop_strings=())
    lm = PrefixLM(llama, 64)
    greedy = lm.greedy(PROMPT, lm.completion(rule, len(PROMPT)))
    second_first = lm.next_logits(PROMPT).topk(2).indices[1].item()
    second_after = lm.next_logits(PROMPT + greedy.tokens[:1]).topk(2).indices[1].item()
    for forced in ([second_first], [greedy.tokens[0], second_after]):
        target = branch_text(llama, rule, forced)
        assert target != greedy.text()
        calls = []

        def reward(text, target=target, calls=calls):
            calls.append(text)
            return float(text == target)

        found = pg_td(llama, PROMPT, reward, rule, PGTDOptions(rollouts=16))
        assert found.text == target and found.stats["best_reward"] == 1.0
        assert calls[0] == greedy.text()  # the first rollout is the greedy program
        assert len(calls) == len(set(calls)) == found.programs_executed
        stopped = pg_td(llama, PROMPT, reward, rule, PGTDOptions(rollouts=16, early_stop=True))
        assert stopped.text == target
        trace = found.stats["trace"]
        first_hit = next(i for i, entry in enumerate(trace) if entry[2] == 1.0)
        assert stopped.stats["rollouts"] == first_hit + 1 < 16


def test_pg_td_caches_rewards_and_handles_terminal_nodes(llama):
    rule = StopRule(max_new_tokens=2, stop_strings=())
    calls = []

    def reward(text):  # no program scores: the search must try them all
        calls.append(text)
        return 0.0

    search = PGTD(llama, PROMPT, reward, rule, PGTDOptions(rollouts=20, top_k=2))
    forwards = []
    for _ in range(20):
        search.rollout()
        forwards.append(search.lm.forwards)
    assert len(calls) == len(set(calls)) == len(search.programs) == 4
    assert len(search.trace) == 20 and [t[0] for t in search.trace] == list(range(1, 21))

    def walk(node, depth):
        assert depth <= 2 and len(node.tokens) == depth
        if node.terminal:
            assert node.actions == [] and node.children == {}
        for child in node.children.values():
            walk(child, depth + 1)

    walk(search.root, 0)
    leaves = [c for n in search.root.children.values() for c in n.children.values()]
    assert len(leaves) == 4 and all(leaf.terminal for leaf in leaves)  # the tree is exhausted
    assert forwards[-1] == forwards[-5]  # rollouts that end on known terminal nodes run nothing
    assert search.root.visits == 21

    # a stop string ends a branch at its first token: that node is terminal, its text empty
    second = search.root.actions[1]
    stop = f"w{second}"
    rule = StopRule(max_new_tokens=4, stop_strings=(stop,))
    seen = []
    search = PGTD(llama, PROMPT, lambda text: seen.append(text) or 0.0, rule,
                  PGTDOptions(top_k=2))
    while second not in search.root.children:
        search.rollout()
    node = search.root.children[second]
    assert node.terminal and node.actions == [] and "" in seen
    for _ in range(6):
        search.rollout()
    assert node.children == {}


def test_pg_td_selects_by_p_ucb(llama):
    """The paper's P-UCB with its defaults (c = 4, c_base = 10), checked against the formula."""
    search = PGTD(llama, PROMPT, lambda text: 0.0, StopRule(max_new_tokens=4, stop_strings=()),
                  PGTDOptions())
    root = search.root
    root.visits = 7
    root.actions, root.priors = [11, 12, 13], [0.6, 0.3, 0.1]
    child = Node((11,), search.root.completion.fork(), returns=5, total=1.0, best=0.4)
    root.children = {11: child}
    beta = math.log((7 + 10 + 1) / 10) + 4
    explore = beta * math.sqrt(math.log(7))
    scores = [0.4 + explore * 0.6 / 6, explore * 0.3, explore * 0.1]
    assert search._select(root) == [11, 12, 13][int(np.argmax(scores))] == 12
    child.returns, child.total, child.best = 2, 1.0, 0.9  # the visited action wins on its max
    scores = [0.9 + explore * 0.6 / 3, explore * 0.3, explore * 0.1]
    assert search._select(root) == [11, 12, 13][int(np.argmax(scores))] == 11
    mean = PGTD(llama, PROMPT, lambda text: 0.0, StopRule(max_new_tokens=4, stop_strings=()),
                PGTDOptions(backup="mean"))
    mean.root.visits, mean.root.actions, mean.root.priors = 7, [11, 12, 13], [0.6, 0.3, 0.1]
    mean.root.children = {11: child}
    scores = [0.5 + explore * 0.6 / 3, explore * 0.3, explore * 0.1]  # ... but not on its mean
    assert mean._select(mean.root) == [11, 12, 13][int(np.argmax(scores))] == 12
    root.visits = 1  # log 1 = 0: no exploration, ties go to the most likely action
    root.children = {}
    assert search._select(root) == 11


def test_pg_td_trace_reads_every_smaller_budget_exactly(llama):
    rule = StopRule(max_new_tokens=8, stop_strings=())

    def reward(text):  # a deterministic score short of 1.0, so no run stops early
        words = text.split()
        return sum(int(w[1:]) % 7 for w in words) / (7 * max(1, len(words)))

    long = pg_td(llama, PROMPT, reward, rule, PGTDOptions(rollouts=32))
    trace = long.stats["trace"]
    assert len(trace) == 32 == long.stats["rollouts"]
    assert [t[1] for t in trace][-1] == long.programs_executed
    assert all(a[2] <= b[2] for a, b in zip(trace, trace[1:]))  # the best reward never drops
    for budget in (8, 16):
        short = pg_td(llama, PROMPT, reward, rule, PGTDOptions(rollouts=budget))
        assert short.stats["trace"] == trace[:budget]
        rollouts, executed, best_reward, best, _ = trace[budget - 1]
        assert short.text == long.stats["programs"][best]["text"]
        assert short.programs_executed == executed and short.stats["best_reward"] == best_reward


def test_pg_td_computes_each_prefix_once(llama):
    rule = StopRule(max_new_tokens=8, stop_strings=())
    search = PGTD(llama, PROMPT, lambda text: 0.0, rule, PGTDOptions())
    for _ in range(16):
        search.rollout()
    # tree and sequence caching: every forward evaluates a prefix no forward evaluated before
    assert search.lm.forwards == len(search.top_k)
    assert search.generations < 16  # some rollouts followed a stored greedy path


def test_options_are_validated(llama):
    for bad in [dict(rollouts=0), dict(top_k=0), dict(rollouts=2.5), dict(c=-1.0),
                dict(c=math.nan), dict(c_base=0), dict(backup="median"), dict(early_stop=1)]:
        with pytest.raises(InvalidOptionError):
            PGTDOptions(**bad)
    for bad in [dict(beam=1), dict(lookahead=0), dict(beam=True)]:
        with pytest.raises(InvalidOptionError):
            AdaDecOptions(**bad)
    for bad in [dict(max_new_tokens=0), dict(stop_strings=("",)), dict(stop_strings="\ndef ")]:
        with pytest.raises(InvalidOptionError):
            StopRule(**bad)
    assert StopRule(stop_strings=["x"]).stop_strings == ("x",)
    with pytest.raises(InvalidOptionError):
        adadec(llama, PROMPT, StopRule(max_new_tokens=2), AdaDecOptions(), math.nan)
    with pytest.raises(InvalidOptionError):
        pg_td(llama, PROMPT, "not callable", StopRule(max_new_tokens=2))
    with pytest.raises(InvalidOptionError):
        pg_td(llama, PROMPT, lambda text: math.nan, StopRule(max_new_tokens=2))
