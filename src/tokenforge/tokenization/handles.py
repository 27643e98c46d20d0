"""One view of every tokenizer the workshop compares: any `tokenizer.json` (ours, the demo's, a
model's) and the reference encodings of GPT-4o (`o200k`), GPT-4 (`cl100k`), Llama-3 and Qwen3.

The reference encodings are the exact ranks shipped in the MIT-licensed `quicktok-v1` package,
used offline. For transplantation a reference is also converted to a transformers tokenizer
(ranks -> BPE merges, the encoding's own pre-tokenizer regex), as tiktoken-to-HF converters do; the
conversion is checked token for token against quicktok in the tests.

Documents are bytes. A text tokenizer sees `corpora.as_text(data)`; a byte tokenizer (our
`--kind byte`) sees one Latin-1 character per byte. Token spans come back as UTF-8 byte ends, which
is what identifier fertility needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from tokenforge.errors import InvalidOptionError
from tokenforge.tokenization.corpora import as_text

SIDECAR = "tokenforge_tokenizer.json"  # written by `tokenizer train`: kind, options, corpus
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN3_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
REFERENCES = {  # our name -> (quicktok encoding, model family, pre-tokenizer for conversion)
    "o200k": ("o200k_base", "GPT-4o", None),
    "cl100k": ("cl100k_base", "GPT-4", None),
    "llama3": ("llama3", "Llama-3", LLAMA3_PATTERN),
    "qwen3": ("qwen3", "Qwen3", QWEN3_PATTERN),
}


@dataclass
class Encoded:
    ids: np.ndarray  # token ids
    ends: np.ndarray  # UTF-8 byte offset where each token ends (for text documents)


def _utf8_char_ends(text: str) -> np.ndarray:
    code = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    widths = 1 + (code >= 0x80) + (code >= 0x800) + (code >= 0x10000)
    return np.concatenate([[0], np.cumsum(widths)])


class Handle:
    """name, vocab_size and encode(documents) for one tokenizer."""

    name: str
    vocab_size: int
    byte_input: bool = False  # True: documents are handed over one Latin-1 character per byte

    def encode(self, documents: list[bytes]) -> list[Encoded]:
        raise NotImplementedError


class HFHandle(Handle):
    def __init__(self, name: str, path: Path):
        from tokenizers import Tokenizer

        self.name = name
        self.tokenizer = Tokenizer.from_file(str(path))
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        sidecar = path.parent / SIDECAR
        self.byte_input = sidecar.exists() and json.loads(sidecar.read_text())["kind"] == "byte"

    def _text(self, data: bytes) -> str:
        return data.decode("latin-1") if self.byte_input else as_text(data)

    def encode(self, documents: list[bytes]) -> list[Encoded]:
        texts = [self._text(d) for d in documents]
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        out = []
        for text, enc in zip(texts, encodings, strict=True):
            char_ends = np.asarray([end for _, end in enc.offsets], dtype=np.int64)
            byte_ends = char_ends if self.byte_input else _utf8_char_ends(text)[char_ends]
            out.append(Encoded(np.asarray(enc.ids, dtype=np.int64), byte_ends))
        return out


class QuicktokHandle(Handle):
    def __init__(self, name: str):
        self.name = name
        self.encoding = reference_encoding(name)
        self.vocab_size = self.encoding.n_vocab
        self._lengths = np.asarray([len(b) for b in reference_token_bytes(name)], dtype=np.int64)

    def encode(self, documents: list[bytes]) -> list[Encoded]:
        flat, offsets = self.encoding.encode_batch([as_text(d) for d in documents], 0, False)
        flat = np.asarray(flat, dtype=np.int64)
        return [Encoded(ids, np.cumsum(self._lengths[ids]))
                for ids in np.split(flat, np.asarray(offsets)[1:-1])]


def reference_encoding(name: str):
    try:
        import quicktok
    except ImportError:
        raise InvalidOptionError("the reference tokenizers need quicktok: pip install "
                                 "'tokenforge[tokenizers]'") from None
    return quicktok.get_encoding(REFERENCES[name][0])


@cache
def reference_token_bytes(name: str) -> list[bytes]:
    """Bytes of every id of a reference encoding (b"" for ids the encoding leaves unused)."""
    enc = reference_encoding(name)
    out = []
    for i in range(enc.n_vocab):
        try:
            out.append(enc.decode_single_token_bytes(i))
        except (KeyError, ValueError, RuntimeError):
            out.append(b"")
    return out


def tokenizer_file(spec: str) -> Path:
    """A tokenizer.json path from a file, a folder holding one, or `demo`/`demo-draft`."""
    from tokenforge.models.load import DEMO_DIR, DEMO_MODELS

    path = DEMO_DIR / spec if spec in DEMO_MODELS else Path(spec).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        known = ", ".join(REFERENCES)
        raise InvalidOptionError(f"tokenizer '{spec}' not found: pass a tokenizer.json, a folder "
                                 f"holding one, demo, or one of {known}")
    return path


def load_handle(spec: str) -> Handle:
    if spec in REFERENCES:
        return QuicktokHandle(spec)
    path = tokenizer_file(spec)
    return HFHandle(path.parent.name if path.name == "tokenizer.json" else path.stem, path)
