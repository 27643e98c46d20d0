"""AdaDec: uncertainty-guided adaptive decoding with a pause-then-rerank lookahead.

Paper: He, Liu, Wang, Li, Wang, Peng, Zheng, "Towards Better Code Generation: Adaptive Decoding
with Uncertainty Guidance" (later versions: "AdaDec: A Uncertainty-Guided Lookahead Decoding
Framework for LLM-Based Code Generation"), arXiv 2506.08980; reference code
github.com/SYSUSELab/AdaDec (llm/generator.py, src/learn_threshold/, src/evaluate.py).

Algorithm: decode greedily; at a step whose next-token Shannon entropy (nats) is >= the
threshold, pause: take the top-B tokens, extend each with an L-token greedy lookahead and score
it by the mean log-probability of the candidate and its lookahead tokens,
    score(c) = (log p(c | x) + sum_j log p(y_j | x, c, y_<j)) / (1 + len(y)),
commit only the best candidate's token (ties: the more likely candidate), then go on greedily.
The lookahead runs as a token tree on the prefix's KV cache: at depth d ONE forward of the
branches' tokens (one per branch still going), each seeing the prefix and its own branch, at
position len(prefix) + d; afterwards the tree is cropped away. A pause costs at most L forwards
of at most B tokens, plus the one-token forward of the committed token as any greedy step.

The threshold is fitted per model (`fit_threshold`): teacher-force reference completions, record
each position's entropy and whether the greedy token differs from the reference's, fit a 1-D
logistic regression P(disagree | entropy) on balanced classes, and take the entropy where P = 0.5.

Options (`AdaDecOptions`): beam B = 3, lookahead L = 5 (the reference's defaults,
src/evaluate.py `--lookahead_beam_size 3`, `--lookahead_length 5`). A threshold of +inf never
pauses and gives plain greedy decoding, token for token.

Differences from the paper and its code:
- The threshold is the P = 0.5 crossing. The reference fits on an 80/20 split and takes the
  probability cut (0.01..0.99) with the best held-out accuracy, then the entropy at that cut.
  Classes are balanced by weights (each class weighs as much as the smaller one) where the
  reference subsamples the larger class; the L2 penalty is sklearn's default (C = 1) as there.
  Where the fit has no crossing in [0, the largest entropy seen] we fall back to the cut with
  the best balanced accuracy, and say so in `ThresholdFit.rule`.
- A branch ends at EOS, a stop string or the token budget (`StopRule`), and its score averages
  the tokens it has. The reference ends a branch at a non-indented line or four blank lines and
  keeps adding log-probabilities after a branch has ended.
- The reference re-runs every candidate sequence without a KV cache; we run one tree forward per
  depth (same numbers up to float rounding). Its outer beam is 1 (AdaFixL), as here, so its
  score scale lambda (a positive factor) cannot change a choice and is not an option. Its
  dynamic-L variant (AdaDynL) is not in its released code and not here.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tokenforge.decoding.api import encode_prompt
from tokenforge.decoding.backends import get_backend
from tokenforge.decoding.registry import option
from tokenforge.decoding.sampling import is_integer
from tokenforge.decoding.strategies.base import Completion, PrefixLM, SearchResult, StopRule
from tokenforge.errors import InvalidOptionError
from tokenforge.models.load import LoadedModel

LOGISTIC_L2 = 1.0  # 1/C of sklearn's LogisticRegression default, which the reference uses


@dataclass(frozen=True)
class AdaDecOptions:
    beam: int = option(3, "B: candidates reranked at a pause")
    lookahead: int = option(5, "L: greedy tokens after each candidate")

    def __post_init__(self):
        if not is_integer(self.beam) or self.beam < 2:
            raise InvalidOptionError(f"adadec: beam must be an integer >= 2 (candidates to "
                                     f"rerank; the paper uses 3), got {self.beam!r}")
        if not is_integer(self.lookahead) or self.lookahead < 1:
            raise InvalidOptionError(f"adadec: lookahead must be an integer >= 1 (tokens after "
                                     f"each candidate; the paper uses 5), got {self.lookahead!r}")


@dataclass
class Candidate:
    """A candidate token at a pause and its greedy lookahead (cut where the completion ends)."""

    token: int
    logprob: float
    lookahead: list[int]
    lookahead_logprobs: list[float]

    @property
    def score(self) -> float:
        """Mean log-probability of the candidate and its lookahead tokens."""
        return (self.logprob + sum(self.lookahead_logprobs)) / (1 + len(self.lookahead))


def entropy(logits: torch.Tensor) -> float:
    """Shannon entropy (nats) of softmax(logits)."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    return float(-(logp.exp() * logp).sum())


def rerank(lm: PrefixLM, seq: list[int], completion: Completion,
           options: AdaDecOptions) -> list[Candidate]:
    """The top-B candidates after `seq` (whose new tokens so far are `completion`), each with its
    L-token greedy lookahead, run as a token tree: one forward per depth. The cache holds `seq`
    again afterwards."""
    logp = torch.log_softmax(lm.next_logits(seq).double(), dim=-1)
    values, ids = torch.topk(logp, min(options.beam, logp.shape[-1]))
    candidates = [Candidate(int(t), float(v), [], []) for v, t in zip(values, ids)]
    branches = [completion.fork() for _ in candidates]
    active = [b for b, c in enumerate(candidates) if not branches[b].add(c.token)]
    tokens = [candidates[b].token for b in active]
    for _ in range(options.lookahead):
        if not active:
            break
        rows = torch.log_softmax(lm.branch_forward(tokens, active).double(), dim=-1)
        picks = rows.argmax(-1).tolist()
        going = []
        for row, (branch, token) in enumerate(zip(active, picks)):
            candidates[branch].lookahead.append(token)
            candidates[branch].lookahead_logprobs.append(float(rows[row, token]))
            if not branches[branch].add(token):
                going.append(branch)
        tokens = [candidates[b].lookahead[-1] for b in going]
        active = going
    lm.drop_tree()
    return candidates


@torch.inference_mode()
def adadec(loaded: LoadedModel, prompt: str | list[int], rule: StopRule = StopRule(),
           options: AdaDecOptions = AdaDecOptions(), threshold: float = math.inf) -> SearchResult:
    """Decode `prompt` greedily, pausing to rerank where the entropy is >= `threshold`."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold):
        raise InvalidOptionError(f"adadec: threshold must be a number of nats (from fit_threshold, "
                                 f"or math.inf for plain greedy), got {threshold!r}")
    start = time.perf_counter()
    prompt_ids = encode_prompt(loaded, prompt)
    lm = PrefixLM(loaded, len(prompt_ids) + rule.max_new_tokens + options.beam * options.lookahead)
    completion = lm.completion(rule, len(prompt_ids))
    seq = list(prompt_ids)
    entropies: list[float] = []
    changed_at: list[int] = []
    pauses = lookahead_forwards = 0
    while not completion.finished:
        logits = lm.next_logits(seq)
        token = int(logits.argmax())
        entropies.append(entropy(logits))
        if entropies[-1] >= threshold:
            pauses += 1
            before = lm.forwards
            best = max(rerank(lm, seq, completion, options), key=lambda c: c.score)
            lookahead_forwards += lm.forwards - before
            if best.token != token:
                changed_at.append(len(completion.tokens))
                token = best.token
        completion.add(token)
        seq.append(token)
    stats = {"threshold": threshold, "beam": options.beam, "lookahead": options.lookahead,
             "pauses": pauses, "changed": len(changed_at), "changed_at": changed_at,
             "lookahead_forwards": lookahead_forwards, "finish_reason": completion.reason,
             "entropy_histogram": histogram(entropies)}
    return SearchResult(text=completion.text(), token_ids=list(completion.tokens),
                        target_forwards=lm.forwards, tokens_forwarded=lm.tokens_forwarded,
                        programs_executed=0, wall_s=time.perf_counter() - start, stats=stats)


def histogram(values: list[float], width: float = 0.5) -> dict[float, int]:
    """Counts per bin of `width` nats, keyed by the bin's lower edge."""
    out: dict[float, int] = {}
    for value in values:
        edge = math.floor(value / width) * width
        out[edge] = out.get(edge, 0) + 1
    return dict(sorted(out.items()))


# -- the threshold ---------------------------------------------------------------------------

@dataclass
class ThresholdFit:
    threshold: float  # nats; math.inf = never pause
    coef: float | None  # the logistic fit, logit P(disagree) = coef * entropy + intercept
    intercept: float | None  # (None where no fit was possible: one class only)
    n_positions: int
    disagreement_rate: float  # of the greedy token with the reference's
    model: str
    rule: str  # how the threshold was chosen

    def save(self, path: str | Path) -> None:
        data = asdict(self)
        data["threshold"] = None if math.isinf(self.threshold) else self.threshold
        Path(path).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ThresholdFit:
        data = json.loads(Path(path).read_text())
        if data["threshold"] is None:
            data["threshold"] = math.inf
        return cls(**data)


def fit_logistic(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None,
                 l2: float = LOGISTIC_L2, steps: int = 100) -> tuple[float, float]:
    """(coef, intercept) of the weighted logistic regression P(y=1 | x) = sigmoid(coef*x + b),
    by Newton's method (IRLS), with `l2` * coef^2 / 2 added to the negative log-likelihood."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    design = np.stack([x, np.ones_like(x)], axis=1)
    penalty = np.diag([l2, 1e-9])  # the intercept is not penalized (a tiny ridge keeps it finite)
    beta = np.zeros(2)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(design @ beta)))
        grad = design.T @ (w * (y - p)) - penalty @ beta
        hess = (design * (w * p * (1 - p))[:, None]).T @ design + penalty
        step = np.linalg.solve(hess, grad)
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    return float(beta[0]), float(beta[1])


def choose_threshold(entropies: np.ndarray, disagree: np.ndarray
                     ) -> tuple[float, float | None, float | None, str]:
    """(threshold, coef, intercept, rule) from each position's entropy and disagreement."""
    entropies = np.asarray(entropies, dtype=np.float64)
    disagree = np.asarray(disagree, dtype=bool)
    n_dis = int(disagree.sum())
    n_agree = len(disagree) - n_dis
    if n_dis == 0:
        return math.inf, None, None, "no disagreement with the references: never pause"
    if n_agree == 0:
        return 0.0, None, None, "every position disagrees with the references: always pause"
    smaller = min(n_dis, n_agree)
    weights = np.where(disagree, smaller / n_dis, smaller / n_agree)
    coef, intercept = fit_logistic(entropies, disagree, weights)
    if coef > 0 and 0.0 <= -intercept / coef <= entropies.max():
        return -intercept / coef, coef, intercept, "logistic: P(disagree | entropy) = 0.5"
    return (balanced_cut(entropies, disagree), coef, intercept,
            "fallback: the logistic fit has no P = 0.5 crossing in [0, max entropy]; the cut "
            "'pause iff entropy >= t' with the best balanced accuracy")


def balanced_cut(entropies: np.ndarray, disagree: np.ndarray) -> float:
    """The lowest t maximizing the balanced accuracy of 'disagree iff entropy >= t'."""
    order = np.argsort(entropies, kind="stable")
    h, d = entropies[order], disagree[order].astype(np.float64)
    dis_above = d[::-1].cumsum()[::-1]  # disagreements at or above index i
    agree_below = np.concatenate([[0.0], (1 - d).cumsum()[:-1]])  # agreements below index i
    score = 0.5 * (dis_above / d.sum() + agree_below / (1 - d).sum())
    first = np.concatenate([[True], h[1:] != h[:-1]])  # a cut between distinct values only
    score[~first] = -1.0
    return float(h[int(score.argmax())])


@torch.inference_mode()
def fit_threshold(loaded: LoadedModel, pairs: list[tuple[str, str]],
                  progress: bool = False) -> ThresholdFit:
    """Fit AdaDec's entropy threshold on (prompt, reference completion) pairs: one forward per
    pair over prompt + reference (the reference tokenized on its own, as the paper's code does)."""
    backend = get_backend(loaded, "auto", role="search")
    context = loaded.context_length
    entropies: list[np.ndarray] = []
    disagree: list[np.ndarray] = []
    for prompt, reference in tqdm(pairs, desc="AdaDec threshold", disable=not progress):
        prompt_ids = encode_prompt(loaded, prompt)
        ref = loaded.tokenizer(reference, add_special_tokens=False, verbose=False)["input_ids"]
        if context is not None:
            ref = ref[: context - len(prompt_ids)]
        if not ref:
            continue
        ids = prompt_ids + ref
        backend.begin(len(ids))
        rows = backend.forward(ids)[len(prompt_ids) - 1: len(ids) - 1].double()
        logp = torch.log_softmax(rows, dim=-1)
        entropies.append((-(logp.exp() * logp).sum(-1)).cpu().numpy())
        disagree.append((rows.argmax(-1).cpu() != torch.tensor(ref)).numpy())
    if not entropies:
        raise InvalidOptionError("fit_threshold needs (prompt, reference) pairs with non-empty "
                                 "references")
    h, d = np.concatenate(entropies), np.concatenate(disagree)
    threshold, coef, intercept, rule = choose_threshold(h, d)
    return ThresholdFit(threshold=threshold, coef=coef, intercept=intercept, n_positions=len(h),
                        disagreement_rate=float(d.mean()), model=loaded.name, rule=rule)
