"""Shared pieces of the search decoders: when a completion ends, a KV-reusing LM, the result.

`StopRule`: a completion of a Python function body ends at EOS, at `max_new_tokens` (or the
model's context), or at the first token after which its text contains a stop string; the text is
then cut before the stop string. `Completion` applies it exactly as the engine's `Stopper` does
(it wraps one), so greedy decoding here stops on the token `tokenforge.generate` stops on.

`PrefixLM` holds the KV cache of one token sequence on the backend of role "search" (never the
engine's own). `logits(seq)` crops the cache to the longest common prefix of `seq` and the
sequence it holds and forwards only the rest (a strict prefix re-forwards its last token);
`branch_forward` appends one token to each of several branches of a token tree rooted at the held
sequence in ONE forward, and `drop_tree` crops the tree away again.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from tokenforge.decoding.backends import get_backend
from tokenforge.decoding.engine import eos_token_ids
from tokenforge.decoding.sampling import is_integer
from tokenforge.decoding.stopper import Stopper
from tokenforge.errors import InvalidOptionError, UnsupportedModelError
from tokenforge.models.load import LoadedModel

PYTHON_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")


@dataclass(frozen=True)
class StopRule:
    """Where a completion ends: EOS, `max_new_tokens`, or the first stop string in its text."""

    max_new_tokens: int = 128
    stop_strings: tuple[str, ...] = PYTHON_STOPS

    def __post_init__(self):
        if not is_integer(self.max_new_tokens) or self.max_new_tokens < 1:
            raise InvalidOptionError(f"max_new_tokens must be an integer >= 1, got "
                                     f"{self.max_new_tokens!r}")
        if isinstance(self.stop_strings, list):
            object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        if not (isinstance(self.stop_strings, tuple)
                and all(isinstance(s, str) and s for s in self.stop_strings)):
            raise InvalidOptionError("stop_strings must be a tuple of non-empty strings, e.g. "
                                     "('\\ndef ',), or () for none")


class Completion:
    """The new tokens of one completion, read by the engine's Stopper: `add` takes one token and
    says whether the completion has ended; `text` is cut before a stop string."""

    def __init__(self, stopper: Stopper):
        self._stopper = stopper

    @property
    def tokens(self) -> list[int]:
        return self._stopper.tokens

    @property
    def finished(self) -> bool:
        return self._stopper.finished

    @property
    def reason(self) -> str | None:
        """eos | length | stop, None while it goes on."""
        return self._stopper.reason

    def add(self, token: int) -> bool:
        self._stopper.add([token])
        return self._stopper.finished

    def fork(self) -> Completion:
        """An independent copy (the Stopper's only mutable container is its token list)."""
        twin = copy.copy(self._stopper)
        twin.tokens = list(self._stopper.tokens)
        return Completion(twin)

    def text(self) -> str:
        """The text so far (read from a copy: reading the end of an unfinished one is final)."""
        return self.fork()._stopper.text()


@dataclass
class SearchResult:
    text: str  # the completion, cut before a stop string
    token_ids: list[int]  # its tokens (as the engine keeps them: with the EOS or stop token)
    target_forwards: int  # backend.forward calls, the prompt's included
    tokens_forwarded: int
    programs_executed: int  # distinct reward calls (PG-TD); 0 for AdaDec
    wall_s: float
    stats: dict = field(default_factory=dict)


class PrefixLM:
    """One backend (role "search") holding the KV cache of one token sequence; see the module
    docstring. Counts `forwards` (backend.forward calls) and `tokens_forwarded`."""

    def __init__(self, loaded: LoadedModel, capacity: int):
        """`capacity`: the most positions the cache will hold (prompt + new tokens + the largest
        token tree). Starts the backend's generation: build one PrefixLM per prompt."""
        self.backend = get_backend(loaded, "auto", role="search")
        self.tokenizer = loaded.tokenizer
        self.eos_ids = eos_token_ids(loaded.model, loaded.tokenizer)
        self.context = loaded.context_length
        self.forwards = 0
        self.tokens_forwarded = 0
        self.sequence: list[int] = []  # the tokens the cache holds, below any token tree
        self._last: torch.Tensor | None = None  # raw next-token logits after `sequence`
        self._tree: list[int] = []  # the branch of each tree token after `sequence`
        with torch.inference_mode():
            self.backend.begin(capacity)

    def completion(self, rule: StopRule, prompt_len: int) -> Completion:
        """An empty completion after a prompt of `prompt_len` tokens: its budget is
        `max_new_tokens`, or what the model's context leaves, as in the engine."""
        budget = rule.max_new_tokens
        if self.context is not None:
            budget = min(budget, self.context - prompt_len)
        return Completion(Stopper(self.tokenizer, self.eos_ids, budget, list(rule.stop_strings),
                                  None))

    def logits(self, seq: list[int]) -> torch.Tensor:
        """Next-token logits after `seq` (float32, vocab)."""
        return self.next_logits(seq).float()

    @torch.inference_mode()
    def next_logits(self, seq: list[int]) -> torch.Tensor:
        """Next-token logits after `seq` in the model's output dtype (greedy takes their argmax,
        as the engine does)."""
        if not seq:
            raise InvalidOptionError("PrefixLM needs a non-empty sequence (the prompt at least)")
        self.drop_tree()
        if seq == self.sequence and self._last is not None:
            return self._last
        common = 0
        for a, b in zip(self.sequence, seq):
            if a != b:
                break
            common += 1
        common = min(common, len(seq) - 1)  # at least the last token is forwarded
        self.backend.crop(common)
        self._last = self._forward(seq[common:], last_only=True)[-1]
        self.sequence = list(seq)
        return self._last

    @torch.inference_mode()
    def branch_forward(self, tokens: list[int], branches: list[int]) -> torch.Tensor:
        """Append tokens[r] to branch branches[r] (distinct ids the caller chooses) of a token
        tree rooted at `sequence`, in one forward: each token sees `sequence` and the earlier
        tokens of its own branch, at position len(sequence) + their number. Returns the raw
        logits (len(tokens), vocab). `next_logits` or `drop_tree` crops the tree away."""
        if not self.backend.supports_tree:
            raise UnsupportedModelError(
                f"{type(self.backend.model).__name__} runs attention that ignores custom masks "
                "(flash-attention), so a lookahead tree cannot run; load the model with "
                "attn_implementation='sdpa'")
        earlier = np.asarray(self._tree, dtype=np.int64)
        mask = np.zeros((len(tokens), len(earlier) + len(tokens)), dtype=bool)
        depths = np.zeros(len(tokens), dtype=np.int64)
        for row, branch in enumerate(branches):
            own = earlier == branch
            mask[row, : len(earlier)] = own
            mask[row, len(earlier) + row] = True
            depths[row] = int(own.sum())
        logits = self._forward(tokens, positions=len(self.sequence) + depths, mask=mask)
        self._tree.extend(branches)
        return logits

    def drop_tree(self) -> None:
        if self._tree:
            self.backend.crop(len(self.sequence))
            self._tree = []

    def greedy(self, seq: list[int], completion: Completion,
               observe: Callable[[list[int], torch.Tensor], None] | None = None) -> Completion:
        """Extend `seq` greedily until `completion` (its new tokens so far, forked here) ends;
        returns the finished completion. `observe(prefix, logits)` sees the raw logits after
        every prefix evaluated on the way."""
        completion = completion.fork()
        seq = list(seq)
        while not completion.finished:
            logits = self.next_logits(seq)
            if observe is not None:
                observe(seq, logits)
            token = int(logits.argmax())
            completion.add(token)
            seq.append(token)
        return completion

    def _forward(self, tokens: list[int], positions: np.ndarray | None = None,
                 mask: np.ndarray | None = None, last_only: bool = False) -> torch.Tensor:
        self.forwards += 1
        self.tokens_forwarded += len(tokens)
        return self.backend.forward(tokens, positions=positions, mask=mask, last_only=last_only)
