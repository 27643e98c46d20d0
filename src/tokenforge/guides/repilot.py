"""A Repilot-style completion engine for Python members: prune what no member completes, force the
rest of a member when only one is left.

Paper: "Copiloting the Copilots: Fusing Large Language Models with Completion Engines for Automated
Program Repair", Wei, Xia and Zhang, ESEC/FSE 2023, arXiv 2309.00608.

Algorithm. Repilot asks a completion engine whether the code generated so far can still be
completed: a token after which no completion exists is pruned, and when the engine returns a
single completion, Repilot writes it at once without asking the model ("active completion"). Here,
on top of the member monitor (guides/python_monitor.py, whose pruning is the same: only tokens
that keep the identifier after `receiver.` a prefix of a member, or that complete one):
- when exactly one member name `n` starts with the partial identifier `p` (and `p != n`), the
  rest `r = n[len(p):]` is forced as its canonical tokenization, `tokenizer.encode(r)` on its own
  (no special tokens, nothing before it: the tokenization the tokenizer gives the remaining
  characters alone), one token at a time: at each step only the next of these tokens is allowed,
  so `forced()` returns them and the engine puts them into the tree as one chain (no acceptance
  test, one forward for the chain instead of one per token);
- after the last one the identifier is complete and the member monitor's rule applies again
  (the next token starts with a non-identifier character).
When `r`'s canonical tokens do not spell `r` with identifier-only tokens, nothing is forced
(counted in `no_canonical`).

Options: those of MemberMonitor (`path`, `suffix`, `private`, `environment`, `cache_size`).

Differences from the paper. Repilot is for Java (Eclipse JDT's completions, any expression), checks
the model's sampled token and resamples when the engine rejects it (the same distribution as the
mask here), memoises rejected prefixes, and commits a unique completion unconditionally, as text.
Here the completion is a constraint instead: the guided distribution at each forced step is the one
canonical token, so guided speculative decoding stays lossless with respect to this guide's
distribution (it gives exactly what guided plain decoding gives), and the forced tokens still pass
through the model's forward (their KV entries are needed) but need no acceptance test. Forcing the
canonical tokenization excludes the other tokenizations of the same text that the member monitor
alone allows. Only member accesses are completed, not other names or whole expressions.
"""

from __future__ import annotations

import torch

from tokenforge.guides.python_monitor import Access, MemberMonitor


class CompletionEngine(MemberMonitor):
    """MemberMonitor + Repilot's active completion: a unique member's rest is forced."""

    name = "completion_engine"

    def __init__(self, tokenizer, **options):
        super().__init__(tokenizer, **options)
        self._onehots: dict[tuple[int, int], torch.Tensor] = {}

    def _reset_counts(self) -> None:
        super()._reset_counts()
        self.counts["no_canonical"] = 0

    def allowed(self) -> torch.Tensor | None:
        plan = self._stack[-1][1].plan
        if not plan:
            return super().allowed()
        key = (self.vocab_size, plan[0])
        mask = self._onehots.get(key)
        if mask is None:
            mask = self._onehots[key] = torch.zeros(self.vocab_size, dtype=torch.bool)
            mask[plan[0]] = True
        return mask

    def consume(self, token: int) -> bool:
        plan = self._stack[-1][1].plan
        if plan and token != plan[0]:
            return False
        return super().consume(token)  # a planned token spells a prefix of the member: allowed

    def stats(self) -> dict:
        """MemberMonitor's, and over the text the guide stands at: the completions forced (unique
        members whose rest was planned) and the tokens consumed under a plan."""
        stack = self._stack
        return {**super().stats(),
                "completions_forced": sum(access.plan_start for _, access in stack),
                "completion_tokens": sum(bool(before[1].plan) for before in stack[:-1])}

    def _step(self, access: Access, token: int, data: bytes) -> Access:
        if access.plan:  # `token` is plan[0] (consume checked it)
            return Access(access.receiver, access.partial + data, access.plan[1:] or None)
        return self._planned(super()._step(access, token, data))

    def _state_at_end(self, default: Access) -> Access:
        return self._planned(super()._state_at_end(default))

    def _planned(self, access: Access) -> Access:
        """`access` with the rest of its member planned, when exactly one member continues it."""
        if not access.live or access.plan:
            return access
        name = access.receiver.unique(access.partial)
        if name is None or name == access.partial:
            return access
        plan = self.vocab.canonical(name[len(access.partial):])
        if plan is None or max(plan) >= self.vocab_size:
            self.counts["no_canonical"] += 1
            return access
        return Access(access.receiver, access.partial, plan, plan_start=True)
