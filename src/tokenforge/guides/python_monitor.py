"""The member monitor of monitor-guided decoding (MGD), for Python, with jedi as the static analysis.

Paper: "Monitor-Guided Decoding of Code LMs with Static Analysis of Repository Context",
Agrawal, Kanade, Goyal, Lahiri and Rajamani, NeurIPS 2023, arXiv 2306.10763.

Algorithm. The guide follows the text (the prompt, then every consumed token's bytes). When the
text ends in `receiver.` + a partial identifier `p` (the `.` an attribute access: not in a comment,
a string or a number, not a relative import), the static analysis (jedi's completions at the `.`)
gives the receiver's member names N, and the next token `t` (its text `s`) is allowed when
- `s` is all identifier characters and `p + s` is a prefix of a name in N, or
- `s` starts with identifier characters `h` and then a non-identifier character (or `t` has no text,
  e.g. EOS), and `p + h` is a name in N: the token completes a member and goes on.
Everywhere else every token is allowed (`allowed()` is None). Where jedi infers no member (no
completion, an unknown type) or the type answers any attribute (it defines `__getattr__`), every
token is allowed too, and the receiver counts in `unknown_receivers`.

Options: `path` (the file the text belongs to, so that jedi resolves relative imports and the
project), `prefix` (source before the prompt, e.g. the start of a file the model's context does not
hold, str or bytes), `suffix` (source after the generation point, e.g. the rest of the file; MGD's
monitor also sees the repository context): both analysed with the text, never generated; these
three are attributes that may change between generations; `private` (members starting with `_` are valid,
default True), `environment` (jedi's; default a subprocess of the
running Python, so no module the text names is imported into this process), `cache_size` (receivers
analysed and kept).

Cost, measured on the demo tokenizer (8192 tokens, one CPU thread of a busy 2-core machine): a
receiver's analysis is one parso parse and one jedi completion, ~20-300 ms on the stdlib files (the
first one in a process ~2-4 s: jedi loads the builtins; a comment is recognised before any parse);
it is cached per text up to the `.`, so a position is analysed once however often a draft tree
walks it. A mask is built from the member names, not by a loop over the vocabulary: for each name
continuing `p`, a walk down a trie of the identifier-only tokens along the name's rest (the tokens
spelling a prefix of it) and a dict lookup of the tokens whose identifier head is the rest: 0.9 ms
after `os.` (454 names), 0.03 ms after `self.` (25 names) or `os.pa`, against 5-11 ms for a Python
loop over the 8192 tokens; masks are cached per (receiver, partial identifier). `consume` checks one
token against the names by bisection (~1 us with its rollback), `rollback` pops a stack and truncates
the text.

Differences from the paper: MGD's monitors ask a language server (multilspy) about a whole Java
repository, and there are monitors for other properties (argument counts, typestate of call
sequences); this is the member (dereference) monitor only, for Python, with jedi. Like MGD's
dereference monitor (microsoft/monitors4codegen), the mask judges a token by its text (prefixes of a
member's rest; the rest followed by a breaking character), so any tokenization of a valid name is
allowed, and a receiver without completions leaves decoding unconstrained. Here:
- identifier characters are ASCII letters, digits, `_` and every byte >= 0x80 (UTF-8 parts of
  non-ASCII identifiers), so `obj. name` (a space after the dot) is not allowed;
- a token that carries the `.` and the start of the name (`.__`, `).__` in the demo vocabulary)
  is let through, since the text before it gives no receiver to check (MGD's monitor, triggered by
  text ending in `.`, does not check it either); its identifier part is checked from the next token
  on, and when no member continues it, that access is left unconstrained (counted in `escaped`);
- MGD also asks with the open brackets closed, for more completions; jedi needs no such help;
- members that jedi cannot see (attributes set by code after the generation point and not in
  `suffix`, setattr, a class being written) are refused; assignments that create a new attribute
  (`self.new = ...`) are therefore refused too: pass the rest of the file as `suffix` where it is
  known.
"""

from __future__ import annotations

import bisect
import time
import weakref
from collections import OrderedDict

import torch

from tokenforge.guides.base import Guide

IDENT = bytes(range(256)).translate(None, bytes(
    b for b in range(128) if not (chr(b).isalnum() or chr(b) == "_")))  # identifier bytes
IS_IDENT = [b in IDENT for b in range(256)]
DOT = ord(".")
IDS = -1  # the key of a trie node's token ids
QUOTES = "'\""
SKIPPED_TYPES = frozenset({"keyword", "path"})  # jedi completions that are no member


def ident_head(data: bytes) -> int:
    """The length of the identifier characters `data` starts with."""
    n = 0
    for byte in data:
        if not IS_IDENT[byte]:
            break
        n += 1
    return n


class Vocabulary:
    """Each token id's bytes, split for the member masks (built once per tokenizer)."""

    def __init__(self, tokenizer):
        from tokenforge.tokenization.vocab import token_bytes

        special = set(getattr(tokenizer, "all_special_ids", []))
        self.bytes = [b"" if i in special else b for i, b in enumerate(token_bytes(tokenizer))]
        self.size = len(self.bytes)
        self.head = [ident_head(b) for b in self.bytes]
        self.all_ident = [bool(b) and h == len(b) for b, h in zip(self.bytes, self.head)]
        self.empty = [i for i, b in enumerate(self.bytes) if not b]  # specials: no text
        self.trie: dict = {}  # identifier-only tokens, byte by byte; IDS: the ids ending there
        self.by_head: dict[bytes, list[int]] = {}  # other tokens with text, by identifier head
        for i, b in enumerate(self.bytes):
            if not b:
                continue
            if self.all_ident[i]:
                node = self.trie
                for byte in b:
                    node = node.setdefault(byte, {})
                node.setdefault(IDS, []).append(i)
            else:
                self.by_head.setdefault(b[: self.head[i]], []).append(i)
        self.tokenizer = tokenizer
        self._canonical: dict[bytes, tuple[int, ...] | None] = {}

    def canonical(self, rest: bytes) -> tuple[int, ...] | None:
        """`tokenizer.encode(rest)` on its own (no special tokens), when its tokens spell `rest`
        and are identifier-only; None otherwise."""
        if rest not in self._canonical:
            ids = self.tokenizer.encode(rest.decode("utf-8", "replace"), add_special_tokens=False)
            ok = (b"".join(self.bytes[i] for i in ids) == rest and all(self.all_ident[i] for i in ids))
            self._canonical[rest] = tuple(ids) if ok and ids else None
        return self._canonical[rest]


_VOCABULARIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def vocabulary(tokenizer) -> Vocabulary:
    try:
        found = _VOCABULARIES.get(tokenizer)
    except TypeError:  # not weak-referenceable
        return Vocabulary(tokenizer)
    if found is None:
        found = _VOCABULARIES[tokenizer] = Vocabulary(tokenizer)
    return found


class Receiver:
    """The member names of the receiver before one `.` (known=False: jedi inferred none)."""

    __slots__ = ("names", "name_set", "known", "masks")

    def __init__(self, names: list[str] | None):
        encoded = sorted({n.encode() for n in names or ()})
        self.names, self.name_set = encoded, frozenset(encoded)
        self.known = bool(encoded)
        self.masks: dict[bytes, torch.Tensor] = {}

    def continuing(self, prefix: bytes) -> list[bytes]:
        """The names starting with `prefix`."""
        names, i = self.names, bisect.bisect_left(self.names, prefix)
        out = []
        while i < len(names) and names[i].startswith(prefix):
            out.append(names[i])
            i += 1
        return out

    def has_prefix(self, prefix: bytes) -> bool:
        i = bisect.bisect_left(self.names, prefix)
        return i < len(self.names) and self.names[i].startswith(prefix)

    def unique(self, prefix: bytes) -> bytes | None:
        """The only name starting with `prefix`, if exactly one does."""
        i = bisect.bisect_left(self.names, prefix)
        names = self.names
        if i < len(names) and names[i].startswith(prefix) and not (
                i + 1 < len(names) and names[i + 1].startswith(prefix)):
            return names[i]
        return None


class Access:
    """The guide's state after a token: outside member access (receiver None), or after
    `receiver.` + `partial`. `live`: the members constrain the next token. `plan`: tokens that
    must come next (the completion engine's forced completion)."""

    __slots__ = ("receiver", "partial", "live", "plan", "plan_start")

    def __init__(self, receiver: Receiver | None, partial: bytes = b"",
                 plan: tuple[int, ...] | None = None, plan_start: bool = False):
        self.receiver, self.partial, self.plan, self.plan_start = receiver, partial, plan, plan_start
        self.live = receiver is not None and receiver.known and receiver.has_prefix(partial)

    @property
    def escaped(self) -> bool:
        return self.receiver is not None and self.receiver.known and not self.live


OUTSIDE = Access(None)


def in_comment(line: str) -> bool:
    """Whether `line` (one line of code, not inside a string at its start) ends in a comment. A
    shortcut before the parse: a wrong True only leaves an access unconstrained."""
    quote, i = None, 0
    while i < len(line):
        if quote is not None:
            if line[i] == "\\":
                i += 2
                continue
            if line.startswith(quote, i):
                i, quote = i + len(quote), None
                continue
        elif line[i] == "#":
            return True
        elif line[i] in QUOTES:
            quote = line[i: i + 3] if line[i: i + 3] in ("'''", '"""') else line[i]
            i += len(quote)
            continue
        i += 1
    return False


def member_position(module, pos: tuple[int, int]) -> bool:
    """Whether the `.` at `pos` of parso's `module` is an attribute access (or a dotted import
    name): not in a comment, a string or a number, not a relative import's dot."""
    leaf = module.get_leaf_for_position(pos, include_prefixes=True)
    if leaf is not None and leaf.start_pos < pos and leaf.end_pos == pos:
        leaf = leaf.get_next_leaf()
    if leaf is None or leaf.type != "operator" or leaf.value != "." or leaf.start_pos != pos:
        return False
    before = leaf.get_previous_leaf()
    if before is None or before.type == "keyword" or (before.type == "operator" and before.value
                                                      in (".", "...")):
        return False  # `from .x`, `from ..x`, a dot with nothing before
    while before is not None and before.end_pos[0] == pos[0]:
        if before.type == "error_leaf" and before.value.lstrip("rbuRBUfF")[:1] in QUOTES:
            return False  # inside a string left open on this line
        before = before.get_previous_leaf()
    return True


class MemberMonitor(Guide):
    """MGD's member monitor: after `receiver.`, only member names of the receiver's type."""

    name = "member_monitor"

    def __init__(self, tokenizer, path: str | None = None, prefix: str | bytes = b"", suffix: str = "",
                 private: bool = True, environment=None, cache_size: int = 1024):
        import jedi
        import parso

        self.vocab = vocabulary(tokenizer)
        self.private, self.cache_size = private, cache_size
        self.environment = environment if environment is not None else jedi.get_default_environment()
        self._grammar = parso.load_grammar()
        self._receivers: OrderedDict[bytes, Receiver | None] = OrderedDict()
        self._suffix, self._path = suffix, path
        self.prefix = prefix
        self.vocab_size = self.vocab.size
        self._text = bytearray()
        self._stack: list[tuple[int, Access]] = [(0, OUTSIDE)]
        self._reset_counts()

    @property
    def suffix(self) -> str:
        return self._suffix

    @suffix.setter
    def suffix(self, value: str) -> None:
        """New source after the generation point: the analyses made with the old one are dropped."""
        if value != self._suffix:
            self._suffix = value
            self._receivers.clear()

    @property
    def path(self) -> str | None:
        return self._path

    @path.setter
    def path(self, value: str | None) -> None:
        """Another file: the analyses made for the old one are dropped."""
        if value != self._path:
            self._path = value
            self._receivers.clear()

    def _reset_counts(self) -> None:
        self.counts = dict.fromkeys(("jedi_calls", "cache_hits", "not_member", "unknown_receivers",
                                     "masks_built", "mask_cache_hits"), 0)
        self.jedi_s = self.mask_s = 0.0

    # --- the seam -------------------------------------------------------------------------------

    def begin(self, prompt_ids: list[int], vocab_size: int) -> None:
        if vocab_size != self.vocab_size:  # masks of another width
            for receiver in self._receivers.values():
                if receiver is not None:
                    receiver.masks.clear()
        super().begin(prompt_ids, vocab_size)
        self._reset_counts()
        tb = self.vocab.bytes
        prefix = self.prefix.encode() if isinstance(self.prefix, str) else bytes(self.prefix)
        self._text = bytearray(prefix + b"".join(tb[t] for t in prompt_ids if 0 <= t < len(tb)))
        self._stack = [(len(self._text), self._state_at_end(OUTSIDE))]

    def allowed(self) -> torch.Tensor | None:
        access = self._stack[-1][1]
        if not access.live:
            return None
        masks = access.receiver.masks
        mask = masks.get(access.partial)
        if mask is None:
            start = time.perf_counter()
            mask = masks[access.partial] = self._member_mask(access.receiver, access.partial)
            self.mask_s += time.perf_counter() - start
            self.counts["masks_built"] += 1
        else:
            self.counts["mask_cache_hits"] += 1
        return mask

    def consume(self, token: int) -> bool:
        access = self._stack[-1][1]
        if not 0 <= token < self.vocab_size:
            return False
        if access.live and not self._token_ok(access, token):
            return False
        data = self.vocab.bytes[token] if token < self.vocab.size else b""
        self._text += data
        self._stack.append((len(self._text), self._step(access, token, data)))
        return True

    def rollback(self, k: int) -> None:
        if k < 0 or k >= len(self._stack):
            raise ValueError(f"cannot roll back {k} tokens: {len(self._stack) - 1} consumed")
        if k:
            del self._stack[-k:]
            del self._text[self._stack[-1][0]:]

    def stats(self) -> dict:
        """Counts since `begin` (analyses, masks, seconds) and, over the text the guide now stands
        at (the committed text, when the engine has rolled its drafts back): the member accesses,
        those with an unknown receiver and the escaped ones."""
        seen: dict[int, Access] = {}
        for _, access in self._stack:
            if access.receiver is not None:
                seen.setdefault(id(access.receiver), access)
        return {**self.counts, "jedi_s": self.jedi_s, "mask_s": self.mask_s,
                "member_accesses": len(seen),
                "unknown_in_text": sum(not a.receiver.known for a in seen.values()),
                "escaped": len({id(a.receiver) for _, a in self._stack if a.escaped})}

    # --- state ----------------------------------------------------------------------------------

    def _step(self, access: Access, token: int, data: bytes) -> Access:
        """The state after `token` (its bytes `data`, already appended to the text)."""
        if not data:  # EOS and other specials: the text does not change
            return access
        if self.vocab.all_ident[token]:  # the identifier after the `.` (if any) grows
            if access.receiver is None:
                return OUTSIDE
            return Access(access.receiver, access.partial + data)
        return self._state_at_end(OUTSIDE)

    def _state_at_end(self, default: Access) -> Access:
        """The state the text's end gives: after `receiver.` + identifier characters, or outside."""
        text = self._text
        i = len(text)
        while i and IS_IDENT[text[i - 1]]:
            i -= 1
        if not i or text[i - 1] != DOT:
            return default
        receiver = self.receiver(bytes(text[:i]))
        return default if receiver is None else Access(receiver, bytes(text[i:]))

    def _token_ok(self, access: Access, token: int) -> bool:
        """Whether `token` may follow the live member access (the rule `_member_mask` vectorises)."""
        receiver, partial = access.receiver, access.partial
        data = self.vocab.bytes[token] if token < self.vocab.size else b""
        if not data:
            return partial in receiver.name_set
        head = self.vocab.head[token]
        if head == len(data):
            return receiver.has_prefix(partial + data)
        return partial + data[:head] in receiver.name_set

    def _member_mask(self, receiver: Receiver, partial: bytes) -> torch.Tensor:
        vocab, ids, start = self.vocab, [], len(partial)
        for name in receiver.continuing(partial):
            ids += vocab.by_head.get(name[start:], ())  # completes `name`, then goes on
            node = vocab.trie
            for byte in name[start:]:  # identifier-only tokens spelling a prefix of the rest
                node = node.get(byte)
                if node is None:
                    break
                ids += node.get(IDS, ())
        if partial in receiver.name_set:
            ids += vocab.empty
            ids += range(vocab.size, self.vocab_size)
        mask = torch.zeros(max(self.vocab_size, vocab.size), dtype=torch.bool)
        if ids:
            mask[torch.tensor(ids, dtype=torch.long)] = True
        return mask[: self.vocab_size]

    # --- analysis -------------------------------------------------------------------------------

    def receiver(self, code: bytes) -> Receiver | None:
        """The receiver before the `.` that ends `code` (cached); None when that `.` is no member
        access. A Receiver with known=False: jedi inferred no member."""
        receivers = self._receivers
        if code in receivers:
            receivers.move_to_end(code)
            self.counts["cache_hits"] += 1
            return receivers[code]
        start = time.perf_counter()
        names = self.member_names(code.decode("utf-8", "replace"))
        self.jedi_s += time.perf_counter() - start
        if names is None:
            self.counts["not_member"] += 1
            found = None
        else:
            found = Receiver(names)
            self.counts["unknown_receivers"] += not found.known
        receivers[code] = found
        if len(receivers) > self.cache_size:
            receivers.popitem(last=False)
        return found

    def member_names(self, code: str) -> list[str] | None:
        """jedi's member names for the `.` that ends `code` ([] when it infers none or the type
        answers any attribute); None when that `.` is no member access."""
        line = code.count("\n") + 1
        column = len(code) - code.rfind("\n") - 1
        if in_comment(code[len(code) - column:]):
            return None
        if not member_position(self._grammar.parse(code), (line, column - 1)):
            return None
        import jedi

        self.counts["jedi_calls"] += 1
        script = jedi.Script(code + self._suffix, path=self._path, environment=self.environment)
        names = [c.name for c in script.complete(line, column)
                 if c.type not in SKIPPED_TYPES and c.name.isidentifier()]
        if "__getattr__" in names:
            return []
        return [n for n in names if self.private or not n.startswith("_")]
