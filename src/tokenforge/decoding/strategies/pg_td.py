"""PG-TD: planning-guided transformer decoding, Monte Carlo tree search over tokens.

Paper: Zhang, Chen, Shen, Ding, Tenenbaum, Gan, "Planning with Large Language Models for Code
Generation", ICLR 2023, arXiv 2303.05510; reference code github.com/shunzh/Code-AI-Tree-Search
(dyna_gym/agents/uct.py and mcts.py, generate/default_pi.py, transformer_utils/cache.py).

Algorithm: a tree whose nodes are completions so far (the prompt is the root). Each rollout
  select:   from the root, follow a ∈ top-k(s) maximizing P-UCB
                Q(s, a) + β(s) · P(a | s) · sqrt(log N(s)) / (1 + N(s, a)),
                β(s) = log((N(s) + c_base + 1) / c_base) + c,
            until an action without a node, or a terminal node (EOS, stop string, budget);
  expand:   the new node's top-k tokens and their probabilities renormalized over the k
            (softmax of the k logits) become its actions and priors; terminal nodes have none;
  evaluate: complete the node greedily (beam 1) to a full completion under the StopRule and
            score it, reward = reward(completion text) (the caller's sandboxed pass rate);
  backup:   every edge on the path records the reward, Q = the max of its rewards (the paper's
            code's default, mode "best"; `backup="mean"` averages); N(s) counts the rollouts
            through s, from 1 (a node counts as visited once when created).
Caches, as in the paper: the top-k of every prefix on a greedy rollout is kept (tree caching: an
expanded node's top-k is computed once, mostly for free), a greedy completion is stored for every
prefix on its path (sequence caching: a later rollout from any of them costs no forward), and the
reward is kept by completion text (`programs_executed` counts the distinct reward calls).

The result is the completion with the highest reward seen (ties: the earliest). The search never
reads its budget, so `stats["trace"]` (a TraceEntry after each rollout: rollouts, programs
executed, best reward, index of the best program in `stats["programs"]`, tokens forwarded) gives
the answer and its cost at every smaller budget exactly.

Options (`PGTDOptions`), with the reference's defaults (generate/synthesis_exp.py): rollouts = 16
(README: "default parameters as in Table 1, performing 16 rollouts"), top_k = 3 (`--width`),
c = 4 (`--ucb-constant`), c_base = 10 (`--ucb-base`), backup = "max" (mcts.py,
chance_node_value mode "best"), early_stop = False (`--early-stop`: stop at reward 1.0).

Differences: completions end by our StopRule (EOS, stop strings, max_new_tokens) where the
reference ends at EOS or its horizon; its budget also stops at `--max-sample-times` model
generations (768), ours counts rollouts only (`stats["generations"]` is its sample count: greedy
rollouts not served by the sequence cache); rewards are cached by completion text, not by token
sequence; terminal nodes get no top-k (the reference computes and never uses it). Rollouts are
greedy, the reference's default (`--num-beams 1`); its beam-search rollouts and value model are
not here.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch

from tokenforge.decoding.api import encode_prompt
from tokenforge.decoding.registry import option
from tokenforge.decoding.sampling import is_integer
from tokenforge.decoding.strategies.base import Completion, PrefixLM, SearchResult, StopRule
from tokenforge.errors import InvalidOptionError
from tokenforge.models.load import LoadedModel

BACKUPS = ("max", "mean")


@dataclass(frozen=True)
class PGTDOptions:
    rollouts: int = option(16, "the budget: rollouts, each evaluates one complete program")
    top_k: int = option(3, "actions (children) per node")
    c: float = option(4.0, "P-UCB exploration constant")
    c_base: float = option(10.0, "P-UCB base")
    backup: str = option("max", "Q(s, a): the max or the mean of the rewards backed up through "
                                "it")
    early_stop: bool = option(False, "stop at the first program with reward 1.0")

    def __post_init__(self):
        for name in ("rollouts", "top_k"):
            value = getattr(self, name)
            if not is_integer(value) or value < 1:
                raise InvalidOptionError(f"pg_td: {name} must be an integer >= 1, got {value!r}")
        if not _real(self.c) or self.c < 0:
            raise InvalidOptionError(f"pg_td: c must be a number >= 0 (the paper uses 4), got "
                                     f"{self.c!r}")
        if not _real(self.c_base) or self.c_base <= 0:
            raise InvalidOptionError(f"pg_td: c_base must be a number > 0 (the paper uses 10), "
                                     f"got {self.c_base!r}")
        if self.backup not in BACKUPS:
            raise InvalidOptionError(f"pg_td: backup must be one of {', '.join(BACKUPS)}, got "
                                     f"{self.backup!r}")
        if not isinstance(self.early_stop, bool):
            raise InvalidOptionError(f"pg_td: early_stop must be True or False, got "
                                     f"{self.early_stop!r}")


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Node:
    """A completion so far; the statistics of the edge into it live here (the tree is
    deterministic: one node per action)."""

    tokens: tuple[int, ...]  # new tokens after the prompt
    completion: Completion
    actions: list[int] = field(default_factory=list)  # top-k, most likely first; none if terminal
    priors: list[float] = field(default_factory=list)
    children: dict[int, Node] = field(default_factory=dict)
    visits: int = 1  # N(s): 1 + the rollouts through this node
    returns: int = 0  # N(parent, a): rewards backed up through the edge into this node
    total: float = 0.0
    best: float = -math.inf  # the max reward backed up (Q under backup="max")

    @property
    def terminal(self) -> bool:
        return self.completion.finished


class TraceEntry(NamedTuple):
    """The search after one rollout: what a run with that budget would have answered."""

    rollouts: int
    programs_executed: int
    best_reward: float
    best: int  # index into stats["programs"]
    tokens_forwarded: int  # prompt included


@dataclass
class Program:
    text: str
    token_ids: list[int]
    reward: float
    rollout: int  # the rollout (0-based) that first evaluated it


class PGTD:
    """The search state of one prompt; `rollout()` runs one MCTS iteration. `pg_td` runs them."""

    def __init__(self, loaded: LoadedModel, prompt: str | list[int],
                 reward: Callable[[str], float], rule: StopRule, options: PGTDOptions):
        if not callable(reward):
            raise InvalidOptionError(f"pg_td: reward must be callable (completion text -> [0, 1]), "
                                     f"got {type(reward).__name__}")
        self.reward, self.options = reward, options
        self.prompt = encode_prompt(loaded, prompt)
        self.lm = PrefixLM(loaded, len(self.prompt) + rule.max_new_tokens + 1)
        self.top_k: dict[tuple[int, ...], tuple[list[int], list[float]]] = {}  # tree caching
        self.greedy: dict[tuple[int, ...], Completion] = {}  # sequence caching
        self.rewards: dict[str, float] = {}  # by completion text
        self.programs: list[Program] = []  # distinct programs, in the order first evaluated
        self.best: int | None = None  # index into programs
        self.trace: list[TraceEntry] = []
        self.generations = 0  # greedy rollouts that ran the model (not from the sequence cache)
        self.nodes = 1
        self.root = self._node((), self.lm.completion(rule, len(self.prompt)))

    def rollout(self) -> tuple[str, float]:
        """One selection-expansion-evaluation-backup; returns (completion text, reward)."""
        path = [self.root]
        node = self.root
        while not node.terminal:
            action = self._select(node)
            child = node.children.get(action)
            if child is None:
                completion = node.completion.fork()
                completion.add(action)
                child = node.children[action] = self._node(node.tokens + (action,), completion)
                self.nodes += 1
                path.append(child)
                break
            node = child
            path.append(node)
        leaf = path[-1]
        program = leaf.completion if leaf.terminal else self._complete(leaf)
        text = program.text()
        reward = self._reward(text, program.tokens)
        for node in path:
            node.visits += 1
        for node in path[1:]:
            node.returns += 1
            node.total += reward
            node.best = max(node.best, reward)
        best = self.programs[self.best]
        self.trace.append(TraceEntry(len(self.trace) + 1, len(self.programs), best.reward, self.best,
                                     self.lm.tokens_forwarded))
        return text, reward

    def result(self, start: float) -> SearchResult:
        best = self.programs[self.best]
        stats = {"rollouts": len(self.trace), "trace": list(self.trace),
                 "programs": [{"text": p.text, "reward": p.reward, "rollout": p.rollout}
                              for p in self.programs],
                 "generations": self.generations, "nodes": self.nodes,
                 "best_reward": best.reward, "options": asdict(self.options)}
        return SearchResult(text=best.text, token_ids=list(best.token_ids),
                            target_forwards=self.lm.forwards,
                            tokens_forwarded=self.lm.tokens_forwarded,
                            programs_executed=len(self.programs),
                            wall_s=time.perf_counter() - start, stats=stats)

    def _select(self, node: Node) -> int:
        """The action maximizing P-UCB (ties: the more likely action)."""
        options = self.options
        beta = math.log((node.visits + options.c_base + 1) / options.c_base) + options.c
        explore = beta * math.sqrt(math.log(node.visits))
        best_action, best_score = node.actions[0], -math.inf
        for action, prior in zip(node.actions, node.priors):
            child = node.children.get(action)
            q, n = (self._value(child), child.returns) if child is not None else (0.0, 0)
            score = q + explore * prior / (1 + n)
            if score > best_score:
                best_action, best_score = action, score
        return best_action

    def _value(self, node: Node) -> float:
        if node.returns == 0:
            return 0.0
        return node.best if self.options.backup == "max" else node.total / node.returns

    def _node(self, tokens: tuple[int, ...], completion: Completion) -> Node:
        node = Node(tokens, completion)
        if not node.terminal:
            if tokens not in self.top_k:
                seq = self.prompt + list(tokens)
                self._observe(seq, self.lm.next_logits(seq))
            node.actions, node.priors = self.top_k[tokens]
        return node

    def _observe(self, seq: list[int], logits: torch.Tensor) -> None:
        key = tuple(seq[len(self.prompt):])
        if key not in self.top_k:
            values, ids = torch.topk(logits.double(), min(self.options.top_k, logits.shape[-1]))
            self.top_k[key] = (ids.tolist(), torch.softmax(values, dim=-1).tolist())

    def _complete(self, leaf: Node) -> Completion:
        """The greedy completion from `leaf`: from the sequence cache, or run and stored for every
        prefix on its path."""
        if leaf.tokens in self.greedy:
            return self.greedy[leaf.tokens]
        done = self.lm.greedy(self.prompt + list(leaf.tokens), leaf.completion, self._observe)
        self.generations += 1
        for end in range(len(leaf.tokens), len(done.tokens)):
            self.greedy.setdefault(tuple(done.tokens[:end]), done)
        return done

    def _reward(self, text: str, tokens: list[int]) -> float:
        if text not in self.rewards:
            value = self.reward(text)
            if not _real(value):
                raise InvalidOptionError(f"pg_td: reward must return a finite number (the pass "
                                         f"rate in [0, 1]), got {value!r}")
            self.rewards[text] = float(value)
            self.programs.append(Program(text, list(tokens), float(value), len(self.trace)))
            if self.best is None or value > self.programs[self.best].reward:
                self.best = len(self.programs) - 1
        return self.rewards[text]


@torch.inference_mode()
def pg_td(loaded: LoadedModel, prompt: str | list[int], reward: Callable[[str], float],
          rule: StopRule = StopRule(), options: PGTDOptions = PGTDOptions(),
          on_rollout: Callable[[int, str, float], None] | None = None) -> SearchResult:
    """Search for the completion of `prompt` with the highest `reward(text)` (see the module
    docstring). `on_rollout(i, completion_text, reward)` runs after rollout i (0-based)."""
    if on_rollout is not None and not callable(on_rollout):
        raise InvalidOptionError(f"pg_td: on_rollout must be callable, got "
                                 f"{type(on_rollout).__name__}")
    start = time.perf_counter()
    search = PGTD(loaded, prompt, reward, rule, options)
    for i in range(options.rollouts):
        text, value = search.rollout()
        if on_rollout is not None:
            on_rollout(i, text, value)
        if options.early_stop and search.programs[search.best].reward >= 1.0:
            break
    return search.result(start)
