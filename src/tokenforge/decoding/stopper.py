"""Stopper: EOS, stop strings and the token budget, with incremental detokenization.

Tokens are taken one at a time, so every method stops on exactly the token plain decoding stops
on: the first EOS, the last token of the budget, or the first token after which the text contains
a stop string (the text is then cut before the stop string; the tokens keep that last token, as
plain decoding does). Text is decoded only when it is needed (stop strings, streaming) and then
incrementally: each decode covers the tokens since the previous read plus the window before it,
and the new text is the difference (as text-generation-inference does), so a step costs the same
however long the generation is. A trailing incomplete UTF-8 character is held back until it
completes.
"""

from __future__ import annotations

from collections.abc import Callable

REPLACEMENT = "\ufffd"


class Stopper:
    def __init__(self, tokenizer, eos_ids: set[int], max_new_tokens: int, stop: list[str],
                 on_text: Callable[[str], None] | None):
        self.tokenizer, self.eos_ids, self.budget = tokenizer, eos_ids, max_new_tokens
        self.stop, self.on_text = stop, on_text
        self.longest_stop = max(map(len, stop), default=0)
        self.tokens: list[int] = []
        self.reason: str | None = None
        self._text = ""  # decoded text of tokens[:_read]
        self._searched = 0  # how much of _text was already searched for stop strings
        self._prefix = 0
        self._read = 0
        self._cut: int | None = None  # where a stop string begins in _text
        self._sent = 0

    @property
    def finished(self) -> bool:
        return self.reason is not None

    def add(self, new: list[int]) -> int:
        """Take tokens one by one until a stop condition; returns how many were kept."""
        kept = 0
        for token in new:
            self.tokens.append(token)
            kept += 1
            if token in self.eos_ids:
                self.reason = "eos"
            elif len(self.tokens) >= self.budget:
                self.reason = "length"
            if self.stop and self._read_text() and self._find_stop():
                self.reason = "stop"
            if self.reason:
                break
        if self.on_text:
            self._stream()
        return kept

    def next_step(self, prompt_len: int, limit: int,
                  should_stop: Callable[[], bool] | None) -> int | None:
        """Before a step: the deepest draft node worth verifying (remaining budget and context),
        or None when the generation must end first (cancelled, or the context is full)."""
        if should_stop and should_stop():
            self.reason = "cancelled"
            return None
        length = prompt_len + len(self.tokens)
        if length >= limit:
            self.reason = "context"
            return None
        return min(self.budget - len(self.tokens), limit - length) - 1

    def text(self) -> str:
        """The final text: cut before a stop string, complete otherwise."""
        if self._cut is not None:
            return self._text[: self._cut]
        if not (self.stop or self.on_text):
            return self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        self._read_text(final=True)
        return self._text

    def close(self) -> None:
        """Send what streaming still holds back (the generation has ended)."""
        if self.on_text:
            text = self.text()
            if len(text) > self._sent:
                self.on_text(text[self._sent:])
                self._sent = len(text)

    def _read_text(self, final: bool = False) -> bool:
        """Decode the tokens since the last read; True when new text arrived."""
        if self._read == len(self.tokens):
            return False
        before = self.tokenizer.decode(self.tokens[self._prefix:self._read],
                                       skip_special_tokens=True)
        window = self.tokenizer.decode(self.tokens[self._prefix:], skip_special_tokens=True)
        if not final and (len(window) <= len(before) or window.endswith(REPLACEMENT)):
            return False  # nothing printable yet, or a character still incomplete
        self._searched = len(self._text)
        self._text += window[len(before):]
        self._prefix, self._read = self._read, len(self.tokens)
        return True

    def _find_stop(self) -> bool:
        start = max(0, self._searched - self.longest_stop + 1)
        hits = [i for i in (self._text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self._cut = min(hits)
        return bool(hits)

    def _stream(self) -> None:
        if self.reason:
            self.close()
            return
        self._read_text()
        ready = len(self._text)
        if self.stop:  # hold back what could still become a stop string
            ready = max(0, ready - self.longest_stop + 1)
        if ready > self._sent:
            self.on_text(self._text[self._sent:ready])
            self._sent = ready
