"""Vocabularies as bytes, and the reference encodings as transformers tokenizers.

Transplantation matches tokens across tokenizers by the bytes they stand for, as mergekit's
tokensurgeon does after normalising its vocabularies (Goddard & Fernandes Neto, 2025, "Training-
Free Tokenizer Transplantation via Orthogonal Matching Pursuit"). We know three spellings:
GPT-2 byte-level characters, `<0xNN>` byte-fallback tokens and plain strings (Latin-1 for our byte
tokenizers). The quicktok ranks become BPE merges the way tiktoken-to-HF converters build them:
for each token, every split into two lower-ranked tokens, ordered by the token's rank.
"""

from __future__ import annotations

import json
from functools import cache

from tokenforge.tokenization.handles import REFERENCES, reference_encoding, reference_token_bytes

FALLBACK_BYTE = "<0x"


@cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by ByteLevel tokenizers."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


@cache
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def to_byte_level(data: bytes) -> str:
    table = byte_to_unicode()
    return "".join(table[b] for b in data)


def _is_byte_level(spec: dict) -> bool:
    return "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) + json.dumps(spec.get("decoder"))


def token_bytes(tokenizer, latin1: bool = False) -> list[bytes]:
    """The bytes each id of a transformers (fast) tokenizer stands for. Added tokens count as their
    UTF-8 text; other tokens as Latin-1 when `latin1` (our byte tokenizers), else UTF-8."""
    backend = tokenizer.backend_tokenizer
    spec = json.loads(backend.to_str())
    byte_level = _is_byte_level(spec)
    back = unicode_to_byte()
    added = {t["id"] for t in spec.get("added_tokens", [])}
    out = []
    for i in range(backend.get_vocab_size(with_added_tokens=True)):
        token = backend.id_to_token(i) or ""
        if i in added:
            out.append(token.encode())
        elif token.startswith(FALLBACK_BYTE) and len(token) == 6 and token.endswith(">"):
            out.append(bytes([int(token[3:5], 16)]))
        elif byte_level and all(c in back for c in token):
            out.append(bytes(back[c] for c in token))
        else:
            out.append(token.encode("latin-1" if latin1 else "utf-8", errors="replace"))
    return out


def _merges(ranks: dict[bytes, int]) -> list[tuple[str, str]]:
    merges = []
    for token, rank in ranks.items():
        pairs = [(token[:i], token[i:]) for i in range(1, len(token))
                 if token[:i] in ranks and token[i:] in ranks]
        pairs.sort(key=lambda p: (ranks[p[0]], ranks[p[1]]))
        merges += [(rank, a, b) for a, b in pairs]
    merges.sort(key=lambda m: m[0])
    return [(to_byte_level(a), to_byte_level(b)) for _, a, b in merges]


def reference_tokenizer(name: str):
    """A quicktok reference encoding (with a pre-tokenizer regex in REFERENCES) as a
    PreTrainedTokenizerFast: byte-level BPE with the same ranks, merges and special tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tokenforge.errors import InvalidOptionError

    pattern = REFERENCES[name][2]
    if pattern is None:
        raise InvalidOptionError(f"'{name}' can be compared with `tokenizer eval` but not yet "
                                 "transplanted onto a model: use llama3, qwen3 or a tokenizer.json")
    enc = reference_encoding(name)
    values = reference_token_bytes(name)
    specials = {i for i in range(enc.n_vocab) if enc.is_special_token(i)}
    ranks = {b: i for i, b in enumerate(values) if b and i not in specials}
    vocab = {to_byte_level(b): i for b, i in ranks.items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=_merges(ranks), ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    for i in sorted(specials):  # the specials follow the ranks, so ids come out unchanged
        tok.add_special_tokens([AddedToken(values[i].decode(), special=True)])
        assert tok.token_to_id(values[i].decode()) == i, f"{name}: special token id {i} moved"
    eos = values[enc.eot_token].decode()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos,
                                   pad_token=eos, clean_up_tokenization_spaces=False)
