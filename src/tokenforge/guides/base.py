"""The guide seam: a constraint on what may follow the committed tokens, honoured by every decoder.

A guide follows the tokens the engine commits (`begin` with the prompt, then `consume` per
token) and answers, at its current state:
- `allowed()`: the tokens that may come next, as a bool mask over the model's logits (None: all);
- `consume(token)`: whether `token` may come next (and if so, steps over it);
- `rollback(k)`: undo the last k consumed tokens (the engine walks a draft tree with these two);
- `forced()`: the tokens that must come next, while only one is allowed ("jump-forward").
`accepts(tokens)` (how many of a sequence the guide takes in turn) follows from these.

In the engine (decoding/guided.py), a guide cuts draft-tree nodes it does not allow (and their
subtrees) before the target's forward, masks the target's distribution at every row that
verification reads, and puts forced tokens into the tree as a chain that needs no acceptance test
(the guided distribution there is one token). Guided speculation thus gives exactly the ids
(greedy) and the distribution (sampling) of guided plain decoding.

Guides compose: `AllOf(a, b)` allows a token when every part does.
"""

from __future__ import annotations

import torch


class Guide:
    name = "guide"

    def begin(self, prompt_ids: list[int], vocab_size: int) -> None:
        """A generation starts after `prompt_ids`; masks have `vocab_size` entries (the width of
        the model's logits, which may exceed the tokenizer's vocabulary)."""
        self.vocab_size = vocab_size

    def allowed(self) -> torch.Tensor | None:
        """Bool mask (vocab_size,) of the tokens allowed next; None when every token is. The
        engine keeps the tensor for the step: return a fresh one, not a buffer reused later."""
        raise NotImplementedError

    def consume(self, token: int) -> bool:
        """Step over `token` when it is allowed next and return True; else False, state unchanged."""
        raise NotImplementedError

    def rollback(self, k: int) -> None:
        """Undo the last `k` consumed tokens."""
        raise NotImplementedError

    def forced(self, limit: int = 64) -> list[int]:
        """The tokens that must come next (at most `limit`): each step where exactly one token is
        allowed. The state is left where it was."""
        out: list[int] = []
        while len(out) < limit:
            mask = self.allowed()
            if mask is None or int(mask.sum()) != 1:
                break
            token = int(mask.nonzero()[0, 0])
            if not self.consume(token):
                break
            out.append(token)
        self.rollback(len(out))
        return out

    def accepts(self, tokens: list[int]) -> int:
        """How many of `tokens`, in turn, the guide takes from its current state (state unchanged)."""
        n = 0
        for token in tokens:
            if not self.consume(token):
                break
            n += 1
        self.rollback(n)
        return n

    def stats(self) -> dict:
        """What the guide counted in this generation (reported in GenerationStats.guide)."""
        return {}

    def end(self) -> None:
        """The generation ended; release what the guide holds for it."""


class AllOf(Guide):
    """Every part must allow a token: masks are AND-ed, tokens consumed by all parts."""

    def __init__(self, *parts: Guide):
        if not parts:
            raise ValueError("AllOf needs at least one guide")
        self.parts = list(parts)
        self.name = "+".join(part.name for part in parts)

    def begin(self, prompt_ids: list[int], vocab_size: int) -> None:
        super().begin(prompt_ids, vocab_size)
        for part in self.parts:
            part.begin(prompt_ids, vocab_size)

    def allowed(self) -> torch.Tensor | None:
        mask = None
        for part in self.parts:
            own = part.allowed()
            if own is not None:
                mask = own.clone() if mask is None else mask.logical_and_(own)
        return mask

    def consume(self, token: int) -> bool:
        for i, part in enumerate(self.parts):
            if not part.consume(token):
                for done in self.parts[:i]:
                    done.rollback(1)
                return False
        return True

    def rollback(self, k: int) -> None:
        for part in self.parts:
            part.rollback(k)

    def stats(self) -> dict:
        return {part.name: part.stats() for part in self.parts}

    def end(self) -> None:
        for part in self.parts:
            part.end()


class DenyTokens(Guide):
    """Never lets the given token ids through (e.g. vulnerability labels, see guides/vuln.py)."""

    name = "deny"

    def __init__(self, token_ids: list[int]):
        self.token_ids = sorted(set(int(t) for t in token_ids))
        self.denied = 0

    def begin(self, prompt_ids: list[int], vocab_size: int) -> None:
        super().begin(prompt_ids, vocab_size)
        self.mask = torch.ones(vocab_size, dtype=torch.bool)
        self.mask[[t for t in self.token_ids if t < vocab_size]] = False

    def allowed(self) -> torch.Tensor:
        return self.mask

    def consume(self, token: int) -> bool:
        if not self.mask[token]:
            self.denied += 1
            return False
        return True

    def rollback(self, k: int) -> None:
        """Nothing to undo: the mask does not depend on the tokens."""

    def stats(self) -> dict:
        return {"denied_draft_tokens": self.denied}
