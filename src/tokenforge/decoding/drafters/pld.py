"""Prompt lookup decoding (PLD).

Paper/reference: Saxena, "Prompt Lookup Decoding" (2023), github.com/apoorvumang/prompt-lookup-decoding;
the same idea as transformers' `prompt_lookup_num_tokens`.

Algorithm: for n = max_ngram down to min_ngram, find the most recent earlier occurrence of the
last n tokens in prompt + generated text and draft the `num_draft` tokens that followed it, as a
chain. With `num_matches` > 1 the continuations of up to that many distinct recent matches (of
the longest n that matches at all) are merged into a token tree, verified in the same forward.

Options: max_ngram=3, min_ngram=1, num_draft=10, num_matches=1.
Differences: transformers searches for the first match from the left; we take the most recent
one (closer context repeats more often in code), as the issue asks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tokenforge.decoding.drafters.base import Drafter
from tokenforge.decoding.registry import Method, option, register, require_positive
from tokenforge.decoding.tree import TokenTree
from tokenforge.errors import InvalidOptionError


@dataclass(frozen=True)
class PLDOptions:
    max_ngram: int = option(3, "longest n-gram to match")
    min_ngram: int = option(1, "shortest n-gram to match")
    num_draft: int = option(10, "tokens drafted per match")
    num_matches: int = option(1, "merge the continuations of this many recent matches into a tree")

    def __post_init__(self):
        require_positive(max_ngram=self.max_ngram, min_ngram=self.min_ngram,
                         num_draft=self.num_draft, num_matches=self.num_matches)
        if self.min_ngram > self.max_ngram:
            raise InvalidOptionError(f"pld: min_ngram ({self.min_ngram}) exceeds max_ngram "
                                     f"({self.max_ngram})")


class PromptLookup(Drafter):
    name = "pld"

    def __init__(self, options: PLDOptions = PLDOptions()):
        self.max_ngram, self.min_ngram = options.max_ngram, options.min_ngram
        self.num_draft, self.num_matches = options.num_draft, options.num_matches

    def propose(self, tokens: list[int], max_depth: int) -> TokenTree:
        arr = np.asarray(tokens)
        length = min(self.num_draft, max_depth)
        for n in range(min(self.max_ngram, len(arr) - 1), self.min_ngram - 1, -1):
            starts = match_starts(arr, n)
            if len(starts):
                continuations = [arr[s + n : s + n + length].tolist() for s in starts[::-1]]
                return trie([c for c in continuations if c][: self.num_matches])
        return TokenTree()


def match_starts(arr: np.ndarray, n: int) -> np.ndarray:
    """Start indices of earlier occurrences of the last n tokens (ascending), excluding itself."""
    windows = sliding_window_view(arr[:-1], n)
    return np.flatnonzero((windows == arr[-n:]).all(axis=1))


def trie(sequences: list[list[int]]) -> TokenTree:
    """Merge token sequences into a tree that shares common prefixes (first sequence first)."""
    tokens: list[int] = []
    parents: list[int] = []
    index: dict[tuple[int, int], int] = {}
    for seq in sequences:
        node = -1
        for token in seq:
            key = (node, token)
            if key not in index:
                index[key] = len(tokens)
                tokens.append(token)
                parents.append(node)
            node = index[key]
    return TokenTree(tokens, parents)


register(Method(
    "pld", "Prompt Lookup Decoding (Saxena 2023)",
    "training-free: drafts the continuation of an earlier n-gram match in the context",
    build=lambda target, draft, options: PromptLookup(options), options_type=PLDOptions,
))
