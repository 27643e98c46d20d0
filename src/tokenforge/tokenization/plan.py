"""How a new vocabulary relates to a model's old one, and new rows as combinations of old rows.

Every transplant method here writes each new embedding (and LM-head) row as a weighted sum of old
rows: shared tokens copy their old row, `subword-mean` averages the old pieces of the new token
(the usual baseline, e.g. in mergekit's tokensurgeon and in TokenAdapt, Sharthak et al., 2025),
OMP and TokenAdapt choose other weights. Tokens are matched by the bytes they stand for; the new
tokenizer's end-of-text, beginning and padding tokens map to the old end-of-text token by role.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from tokenforge.tokenization.vocab import to_byte_level, token_bytes


@dataclass
class Plan:
    new_bytes: list[bytes]
    old_bytes: list[bytes]
    shared_new: torch.Tensor  # new ids with an old counterpart ...
    shared_old: torch.Tensor  # ... and that counterpart
    unshared: torch.Tensor  # new ids to approximate
    pieces: dict[int, list[int]]  # unshared new id -> old ids that spell it

    @property
    def new_vocab(self) -> int:
        return len(self.new_bytes)


@dataclass
class Combination:
    """Rows `new_ids` := sum_j weight[:, j] * old[index[:, j]] (padding has weight 0)."""

    new_ids: torch.Tensor  # (n,)
    index: torch.Tensor  # (n, k) old ids
    weight: torch.Tensor  # (n, k)

    @staticmethod
    def from_lists(new_ids: list[int], ids: list[list[int]], weights: list[list[float]]):
        k = max([len(i) for i in ids] + [1])
        index = torch.zeros(len(ids), k, dtype=torch.long)
        weight = torch.zeros(len(ids), k)
        for row, (i, w) in enumerate(zip(ids, weights, strict=True)):
            index[row, : len(i)] = torch.as_tensor(i, dtype=torch.long)
            weight[row, : len(w)] = torch.as_tensor(w, dtype=torch.float32)
        return Combination(torch.as_tensor(new_ids, dtype=torch.long), index, weight)

    @staticmethod
    def concat(parts: list[Combination]) -> Combination:
        width = max(p.index.shape[1] for p in parts)

        def pad(t: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, width - t.shape[1]))

        return Combination(torch.cat([p.new_ids for p in parts]),
                           torch.cat([pad(p.index) for p in parts]),
                           torch.cat([pad(p.weight) for p in parts]))

    def apply(self, old: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(self.new_ids), old.shape[1], dtype=old.dtype)
        for start in range(0, len(self.new_ids), 4096):  # bounded memory for 128k vocabularies
            sl = slice(start, start + 4096)
            out[sl] = torch.einsum("nk,nkd->nd", self.weight[sl].to(old.dtype), old[self.index[sl]])
        return out


def _decomposer(old_tokenizer):
    """bytes -> the old ids that spell them (the old BPE applied to the bytes as one word)."""
    backend = old_tokenizer.backend_tokenizer
    if "ByteLevel" in json.dumps(json.loads(backend.to_str()).get("pre_tokenizer")):
        return lambda data: [t.id for t in backend.model.tokenize(to_byte_level(data))]
    return lambda data: backend.encode(data.decode("utf-8", errors="replace"),
                                       add_special_tokens=False).ids


def make_plan(old_tokenizer, new_tokenizer, new_latin1: bool = False) -> Plan:
    old_bytes = token_bytes(old_tokenizer)
    new_bytes = token_bytes(new_tokenizer, latin1=new_latin1)
    old_index: dict[bytes, int] = {}
    for i, b in enumerate(old_bytes):
        old_index.setdefault(b, i)
    roles = {getattr(new_tokenizer, f"{r}_token_id") for r in ("eos", "bos", "pad")} - {None}
    shared_new, shared_old, unshared = [], [], []
    for i, b in enumerate(new_bytes):
        old = old_tokenizer.eos_token_id if i in roles else old_index.get(b) if b else None
        if old is None:
            unshared.append(i)
        else:
            shared_new.append(i)
            shared_old.append(old)
    decompose = _decomposer(old_tokenizer)
    pieces = {i: decompose(new_bytes[i]) if new_bytes[i] else [] for i in unshared}
    return Plan(new_bytes, old_bytes, torch.as_tensor(shared_new, dtype=torch.long),
                torch.as_tensor(shared_old, dtype=torch.long),
                torch.as_tensor(unshared, dtype=torch.long), pieces)


def subword_weights(plan: Plan, new_id: int) -> tuple[list[int], list[float]]:
    ids = plan.pieces[new_id]
    return ids, [1.0 / len(ids) for _ in ids]


def subword_mean(plan: Plan, new_ids: list[int]) -> Combination:
    """The mean of the old pieces of each new token (empty tokens get an all-zero row)."""
    pairs = [subword_weights(plan, i) for i in new_ids]
    return Combination.from_lists(new_ids, [p[0] for p in pairs], [p[1] for p in pairs])
