"""Grammar guides: JSON schema, any JSON object, regex and Lark grammars, compiled by llguidance.

Reference: llguidance (Moskal et al., github.com/guidance-ai/llguidance), the Earley parser + lazy
lexer behind Guidance and the structured outputs of several serving stacks; version 1.9.

What it does: `GrammarGuide(tokenizer, kind, source)` compiles the grammar once (a grammar that
does not compile raises GuideError quoting llguidance's message) and walks an `LLMatcher` over the
tokens the engine consumes from `begin`; the prompt is not parsed, the grammar constrains the
generated text only, from its first token. `allowed()` is llguidance's token bitmask unpacked to a
bool mask of the model's logits width (columns past the tokenizer's vocabulary are False; a
narrower width cuts the tokenizer's last tokens off). At the grammar's end the mask allows the
tokenizer's EOS (passed to llguidance), and once EOS is consumed nothing more is allowed. A guide
follows one generation at a time; `begin` starts the next one.

Kinds and sources: "json_schema" (a dict or its JSON text), "json_object" (None: any JSON object),
"regex" (a str; the whole output must match it), "lark" (a str in llguidance's Lark dialect,
github.com/guidance-ai/llguidance/blob/main/docs/syntax.md). Options: JSON is laid out as
`json.dumps` does by default (", " between items, ": " after keys, no other whitespace: JSON_LAYOUT)
where llguidance allows any whitespace between tokens, which let the demo model write newlines
until max_new_tokens in 2 of 3 prompts; a schema's own "x-guidance" key overrides the layout
(llguidance's JSON compile options, e.g. {"x-guidance": {"whitespace_flexible": true}}).

Cost: the guide keeps the packed bitmask of every state it has computed in a trie keyed by the
consumed tokens (pruning a draft tree, forcing a chain and masking the verified rows all ask for
the same states, and a later generation starts from the same root), up to CACHE_BYTES of them;
past that it keeps only the current path. JSON grammars use llguidance's JSON mask "slices" (the same masks,
about 30% faster than its general ones on these schemas). Measured on the demo model (8192 tokens,
CPU, OMP_NUM_THREADS=1, a shared 2-core machine), 60 guided JSON-schema generations
(benchmarks/guided_json.py's schemas): an llguidance mask takes a median 104 µs (p90 180 µs)
where the model has a choice (e.g. inside a string, thousands of tokens allowed) and 19 µs where
the grammar forces the next token; `allowed()` adds a median 12 µs to unpack it (np.unpackbits:
4 µs on an idle core, against 14 µs for the same with torch shifts); `consume` is a bit test on
the cached mask plus llguidance's step, a median 3 µs. All told the guide took 140 µs per
generated token, 4.5% of guided plain decoding's time, against 7 ms for a target forward.

Differences from llguidance used on its own:
- Canonical tokenization. llguidance's mask allows only the canonical tokenization of text the
  grammar forces (after `start: "import " NAME` the mask holds "import", not "imp"), while its
  `validate_tokens` accepts any tokenization. Here `consume` checks the mask, so `allowed()` and
  `consume()` agree exactly, and a draft that spells forced text with other tokens is cut by the
  guide before the target's forward: lossless (guided plain decoding never picks those tokens
  either), only fewer accepted tokens for that draft.
- Jump-forward. `forced()` is the base class's walk (each step where exactly one token is
  allowed), run on each state's cached count of allowed tokens, not `compute_ff_tokens()`: on
  19,000 states of six grammars on the demo tokenizer the two agreed except where the grammar is
  complete, where the walk forces EOS and `compute_ff_tokens()` returns nothing; the walk is the
  definition the engine relies on, and the masks it computes serve the steps that follow.
- EOS is never given to the matcher: at a complete grammar llguidance takes EOS without recording
  it, so its `rollback(1)` would undo the token before; the guide marks the state after EOS final.
- A token the mask refuses is never given to the matcher (llguidance's matcher cannot leave an
  error state, not even by `reset`); were llguidance to refuse a token its own mask allowed, the
  guide rebuilds the matcher from the consumed tokens and refuses the token (counted in stats as
  matcher_rebuilds).

Stats (GenerationStats.guide, next to the engine's counts): grammar, grammar_masks (computed by
llguidance in this generation), grammar_masks_reused (found in the trie), grammar_mask_s,
grammar_cache_trims, matcher_rebuilds.
"""

from __future__ import annotations

import json
import time
import weakref

import numpy as np
import torch

from tokenforge.errors import GuideError
from tokenforge.guides.base import Guide

KINDS = ("json_schema", "json_object", "regex", "lark")
# JSON as json.dumps lays it out; llguidance's default (any whitespace between tokens) let the demo
# model write newlines until max_new_tokens in 2 of 3 prompts. A schema's "x-guidance" overrides it.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
CACHE_BYTES = 32 << 20  # the state trie's budget (a state: its bitmask, 1 KB for 8192 tokens, and
# about 300 bytes); past it the trie keeps only the current path


class TokenizerCache:
    """llguidance's LLTokenizer for a tokenizer object, built once (0.1-1 s), with llguidance's
    general mask "slices" or its JSON ones (same masks, about 30% less time on JSON grammars)."""

    def __init__(self):
        self._entries: dict[int, tuple[weakref.ref, dict[str, object]]] = {}

    def get(self, tokenizer, slices: str = "general"):
        key = id(tokenizer)
        entry = self._entries.get(key)
        if entry is None or entry[0]() is not tokenizer:
            self._entries = {k: e for k, e in self._entries.items() if e[0]() is not None}
            entry = self._entries[key] = (weakref.ref(tokenizer),
                                          {"general": _build_tokenizer(tokenizer)})
        variants = entry[1]
        if slices not in variants:
            from llguidance import LLTokenizer

            variants[slices] = variants["general"].with_slices(LLTokenizer.json_slices())
        return variants[slices]


def _llguidance():
    try:
        import llguidance
        import llguidance.hf
    except ImportError:
        raise GuideError("grammar guides need llguidance: pip install 'tokenforge[guide]'") from None
    return llguidance


def _build_tokenizer(tokenizer):
    llguidance = _llguidance()
    n_vocab = len(tokenizer)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        n_vocab = max(n_vocab, backend.get_vocab_size(with_added_tokens=True))
    try:
        return llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab,
                                            eos_token=tokenizer.eos_token_id)
    except Exception as err:  # a slow tokenizer, one without EOS, one llguidance cannot read
        raise GuideError(f"llguidance cannot use this tokenizer ({type(tokenizer).__name__}): "
                         f"{one_line(str(err))}") from None


def one_line(message: str) -> str:
    """llguidance's message on one line, without the caret lines and source excerpts it adds."""
    kept = []
    for line in message.splitlines():
        line = line.strip()
        if not line or set(line) <= {"^", " "} or line.split("|")[0].strip().isdigit():
            continue
        kept.append(line)
    return " ".join(kept) or message.strip()


def schema_dict(source: dict | str) -> dict:
    """A JSON schema given as a dict or as its JSON text, as a dict (GuideError otherwise)."""
    schema = source
    if isinstance(source, str):
        try:
            schema = json.loads(source)
        except json.JSONDecodeError as err:
            raise GuideError(f"the JSON schema is not valid JSON: {err}") from None
    if not isinstance(schema, dict):
        raise GuideError(f"a JSON schema must be a JSON object, got {type(schema).__name__}")
    return schema


def grammar_text(kind: str, source) -> str:
    """llguidance's grammar for (kind, source); GuideError when the source is not of the kind."""
    from llguidance import LLMatcher

    if kind not in KINDS:
        raise GuideError(f"unknown grammar kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "json_object":
        if source is not None:
            raise GuideError("json_object takes no source (it allows any JSON object)")
        return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_LAYOUT)
    if kind == "json_schema":
        schema = schema_dict(source)
        try:
            return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_LAYOUT)
        except ValueError as err:
            raise GuideError(f"invalid JSON schema: {one_line(str(err))}") from None
    if not isinstance(source, str) or not source:
        raise GuideError(f"a {kind} grammar must be a non-empty str, got {source!r:.60}")
    if kind == "regex":
        return LLMatcher.grammar_from_regex(source)
    return LLMatcher.grammar_from_lark(source)


class _State:
    """A matcher state: the packed bitmask there (None until asked), and the states after each
    token consumed from it. `final`: EOS was consumed, nothing more is allowed. `single`: the
    only token allowed in a mask of `width` entries, -1 when not exactly one (None: not known)."""

    __slots__ = ("bits", "children", "final", "single", "width")

    def __init__(self, final: bool = False):
        self.bits: bytes | None = None
        self.children: dict[int, _State] = {}
        self.final = final
        self.single: int | None = None
        self.width = 0


class GrammarGuide(Guide):
    tokenizers = TokenizerCache()  # shared by every GrammarGuide: one LLTokenizer per tokenizer

    def __init__(self, tokenizer, kind: str, source=None):
        llguidance = _llguidance()
        if kind not in KINDS:
            raise GuideError(f"unknown grammar kind {kind!r}; choose one of {', '.join(KINDS)}")
        self.kind = self.name = kind
        self.lltokenizer = self.tokenizers.get(tokenizer, "json" if kind.startswith("json") else
                                               "general")
        self.n_vocab = self.lltokenizer.vocab_size
        self.eos = set(self.lltokenizer.eos_tokens)
        self.grammar = grammar_text(kind, source)
        label = {"json_schema": "JSON schema", "json_object": "JSON object grammar",
                 "regex": "regex", "lark": "Lark grammar"}[kind]
        error = llguidance.LLMatcher.validate_grammar(self.grammar, self.lltokenizer)
        if error:
            raise GuideError(f"invalid {label}: {one_line(error)}")
        self.matcher = self._new_matcher()
        if self.matcher.is_error():
            raise GuideError(f"invalid {label}: {one_line(self.matcher.get_error())}")
        self.root = _State()
        self.path = [self.root]  # the states from begin to the current one
        self.tokens: list[int] = []  # the tokens consumed since begin (path[i + 1] follows tokens[i])
        self.states = 1  # in the trie
        self.max_states = max(256, CACHE_BYTES // (4 * ((self.n_vocab + 31) // 32) + 300))
        self.vocab_size = self.n_vocab
        self._reset_counts()

    def _new_matcher(self):
        from llguidance import LLMatcher

        return LLMatcher(self.lltokenizer, self.grammar, log_level=0)

    def _reset_counts(self) -> None:
        self.masks_computed = self.masks_reused = self.matcher_rebuilds = self.trims = 0
        self.mask_s = 0.0

    # -- the seam --------------------------------------------------------------------------

    def begin(self, prompt_ids: list[int], vocab_size: int) -> None:
        super().begin(prompt_ids, vocab_size)
        if len(self.path) > 1:
            self.rollback(len(self.path) - 1)
        self._reset_counts()

    def allowed(self) -> torch.Tensor:
        state = self.path[-1]
        if state.final:
            return torch.zeros(self.vocab_size, dtype=torch.bool)
        # count past the bitmask's end pads with zeros: the mask is exactly vocab_size wide
        bits = np.unpackbits(np.frombuffer(self._bits(state), dtype=np.uint8),
                             count=self.vocab_size, bitorder="little")
        if self.vocab_size > self.n_vocab:
            bits[self.n_vocab:] = 0
        return torch.from_numpy(bits.view(np.bool_))

    def consume(self, token: int) -> bool:
        token = int(token)
        state = self.path[-1]
        if state.final or not 0 <= token < min(self.n_vocab, self.vocab_size):
            return False
        bits = self._bits(state)
        if not (bits[token >> 3] >> (token & 7)) & 1:
            return False
        final = token in self.eos
        # EOS is not given to the matcher: at a complete grammar llguidance takes it without
        # recording it, and its rollback(1) would then undo the token before.
        if not final and not self.matcher.consume_token(token):  # disagrees with its own mask
            self._rebuild()
            return False
        child = state.children.get(token)
        if child is None:
            if self.states >= self.max_states:
                self._trim()
            child = state.children[token] = _State(final=final)
            self.states += 1
        self.path.append(child)
        self.tokens.append(token)
        return True

    def forced(self, limit: int = 64) -> list[int]:
        """The base class's walk (each step where exactly one token is allowed, consumed), on the
        states' cached counts instead of unpacked masks."""
        out: list[int] = []
        while len(out) < limit:
            token = self._single(self.path[-1])
            if token < 0 or not self.consume(token):
                break
            out.append(token)
        self.rollback(len(out))
        return out

    def rollback(self, k: int) -> None:
        if k <= 0:
            return
        if k >= len(self.path):
            raise ValueError(f"cannot roll back {k} tokens: {len(self.path) - 1} consumed")
        fed = k - self.path[-1].final  # the matcher never saw a final EOS
        del self.path[-k:]
        del self.tokens[-k:]
        if fed and not self.matcher.rollback(fed):
            self._rebuild()

    def stats(self) -> dict:
        return {"grammar": self.kind, "grammar_masks": self.masks_computed,
                "grammar_masks_reused": self.masks_reused, "grammar_mask_s": self.mask_s,
                "grammar_cache_trims": self.trims, "matcher_rebuilds": self.matcher_rebuilds}

    def end(self) -> None:
        """Keep the cached states (the next generation starts from the same root)."""

    # -- internals -------------------------------------------------------------------------

    def _bits(self, state: _State) -> bytes:
        if state.bits is not None:
            self.masks_reused += 1
            return state.bits
        start = time.perf_counter()
        state.bits = self.matcher.compute_bitmask()
        self.mask_s += time.perf_counter() - start
        self.masks_computed += 1
        return state.bits

    def _single(self, state: _State) -> int:
        """The only token allowed at `state` (as allowed() has it), or -1."""
        if state.final:
            return -1
        if state.single is None or state.width != self.vocab_size:
            n = min(self.n_vocab, self.vocab_size)
            found = np.flatnonzero(np.unpackbits(np.frombuffer(self._bits(state), dtype=np.uint8),
                                                 count=n, bitorder="little"))
            state.single, state.width = (int(found[0]) if len(found) == 1 else -1), self.vocab_size
        return state.single

    def _trim(self) -> None:
        """Forget every cached state off the current path."""
        self.trims += 1
        for state, token, after in zip(self.path, self.tokens, self.path[1:]):
            state.children = {token: after}
        self.path[-1].children = {}
        self.states = len(self.path)

    def _rebuild(self) -> None:
        """A fresh matcher stepped over the consumed tokens (llguidance's errors are final)."""
        self.matcher_rebuilds += 1
        self.matcher = self._new_matcher()
        fed = self.tokens[:len(self.tokens) - self.path[-1].final]
        if fed and not self.matcher.consume_tokens(fed):
            raise GuideError(f"llguidance refused tokens its own masks allowed: "
                             f"{one_line(self.matcher.get_error())}")
