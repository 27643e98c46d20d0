"""Train a tokenizer with HF `tokenizers`: domain BPE, byte BPE for executables, character BPE.

- `bpe` follows the KL3M tokenizers (Bommarito et al., 2025, "KL3M Tokenizers: A Family of
  Domain-Specific and Character-Level Tokenizers for Legal, Financial, and Preprocessing
  Applications"): byte-level BPE, optional NFKC, forced tokens for indentation runs and
  configurable special tokens. We split with the Llama-3 pre-tokenizer regex instead of KL3M's
  and force indentation runs as added tokens (multiples of four spaces, one to four tabs).
- `byte` follows Binary BPE (Bommarito, 2025, "Binary BPE: A Family of Cross-Platform Tokenizers
  for Binary Analysis"): raw bytes with no text pre-tokenization, 8192-byte training chunks, a
  minimum pair frequency and tokens of at most 16 bytes. Each byte is one Latin-1 character and
  the 256 single bytes are the base vocabulary, so any 0x00-0xFF sequence round-trips; `<0xNN>`
  byte-fallback tokens also carry characters above U+00FF, so any str round-trips too. We train
  on this machine's ELF files only, not on several platforms.
- `char` follows KL3M's character tokenizers (4k/8k/16k, OCR correction): BPE over characters with
  tokens of at most `max_token_length` (default 4) characters and `<0xNN>` byte-fallback tokens
  for characters outside the vocabulary.
- `supertokens` follows TokenAdapt's Supertokens (Sharthak et al., 2025): training text is cut
  into random spans of one to four pre-tokens, so merges may cross whitespace; at inference only
  line breaks split the input. TokenAdapt samples span lengths from its own distribution; ours is
  uniform and seeded.
- `pretokenizer="gpt2"` (bpe only) splits with byte-level BPE's own GPT-2 pattern instead of the
  Llama-3 one; with no forced tokens and `min_frequency=0` it trains the bundled demo models'
  tokenizer (`tokenforge.models.train_demo`).

Round-trip (decode(encode(x)) == x) holds for every kind without `nfkc`; with `nfkc` it holds
for NFKC-normalised text.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from tokenforge.errors import InvalidOptionError
from tokenforge.tokenization.corpora import Corpus, as_text
from tokenforge.tokenization.handles import LLAMA3_PATTERN, SIDECAR

KINDS = ("bpe", "byte", "char")
PRETOKENIZERS = ("llama3", "gpt2")
EOS = "<|endoftext|>"
INDENT_RUNS = tuple(" " * n for n in range(4, 33, 4)) + tuple("\t" * n for n in range(1, 5))
BYTE_CHUNK = 8192
BYTE_MAX_TOKEN = 16
SUPERTOKEN_MAX_WORDS = 4
LINES = r"[^\r\n]+|[\r\n]+"
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))


@dataclass
class TrainOptions:
    kind: str = "bpe"
    vocab_size: int = 8192
    special_tokens: tuple[str, ...] = (EOS,)
    nfkc: bool = False
    indent_tokens: bool = True  # bpe only
    supertokens: bool = False
    min_frequency: int = 2
    max_token_length: int | None = None  # char: default 4; byte: default 16; bpe: no cap
    seed: int = 0
    pretokenizer: str = "llama3"  # bpe only: "gpt2" is ByteLevel's built-in split

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise InvalidOptionError(f"unknown tokenizer kind '{self.kind}': use one of "
                                     f"{', '.join(KINDS)}")
        floor = 256 + self.reserved + len(self.special_tokens) + 1
        if self.vocab_size < floor:
            raise InvalidOptionError(f"--vocab {self.vocab_size} is too small for a {self.kind} "
                                     f"tokenizer: use at least {floor} (the 256 bytes, byte "
                                     "fallback, special and forced tokens, one merge)")
        if self.kind == "byte" and self.supertokens:
            raise InvalidOptionError("--supertokens needs text: binaries have no words to join; "
                                     "drop --supertokens or use --kind bpe/char")
        if self.kind == "byte" and self.nfkc:
            raise InvalidOptionError("--nfkc would change raw bytes: drop it for --kind byte")
        if self.max_token_length is not None and not 1 <= self.max_token_length <= 64:
            raise InvalidOptionError("--max-token-length must be between 1 and 64")
        if self.pretokenizer not in PRETOKENIZERS:
            raise InvalidOptionError(f"unknown pre-tokenizer '{self.pretokenizer}': use one of "
                                     f"{', '.join(PRETOKENIZERS)}")
        if self.pretokenizer == "gpt2" and (self.kind != "bpe" or self.supertokens):
            raise InvalidOptionError("the gpt2 pre-tokenizer is for --kind bpe without "
                                     "--supertokens")

    @property
    def forced_tokens(self) -> tuple[str, ...]:
        return INDENT_RUNS if self.kind == "bpe" and self.indent_tokens else ()

    @property
    def reserved(self) -> int:
        """Vocabulary slots added after training: byte-fallback and forced tokens."""
        return (len(BYTE_TOKENS) if self.kind != "bpe" else 0) + len(self.forced_tokens)


def _pieces(text: str) -> list[str]:
    from tokenizers import Regex, pre_tokenizers

    split = pre_tokenizers.Split(Regex(LLAMA3_PATTERN), "isolated")
    return [piece for piece, _ in split.pre_tokenize_str(text)]


def supertoken_spans(text: str, rng: random.Random) -> list[str]:
    """Cut a text into spans of 1..SUPERTOKEN_MAX_WORDS pre-tokens (never across a line break):
    each span is one training word, so BPE may merge across the spaces inside it."""
    spans, current, want = [], "", rng.randint(1, SUPERTOKEN_MAX_WORDS)
    for piece in _pieces(text):
        if "\n" in piece or "\r" in piece:
            spans += [s for s in (current, piece) if s]
            current, want = "", rng.randint(1, SUPERTOKEN_MAX_WORDS)
            continue
        current += piece
        want -= 1
        if want == 0:
            spans.append(current)
            current, want = "", rng.randint(1, SUPERTOKEN_MAX_WORDS)
    return spans + ([current] if current else [])


def training_texts(corpus: Corpus, opts: TrainOptions) -> Iterator[list[str]]:
    """What the trainer reads, per document: the text between forced tokens (the tokenizer splits
    those off before BPE at inference, so BPE must not learn across them), cut into supertoken
    spans when asked."""
    forced = sorted(opts.forced_tokens, key=len, reverse=True)
    splitter = re.compile("|".join(re.escape(t) for t in forced)) if forced else None
    rng = random.Random(opts.seed)
    for doc in tqdm(corpus.documents, desc="read corpus", unit="doc"):
        text = as_text(doc.data)
        segments = [s for s in splitter.split(text) if s] if splitter else [text]
        if opts.supertokens:
            segments = [span for seg in segments for span in supertoken_spans(seg, rng)]
        yield segments


def byte_chunks(corpus: Corpus) -> Iterator[str]:
    """8192-byte chunks, one Latin-1 character per byte."""
    for doc in tqdm(corpus.documents, desc="read corpus", unit="doc"):
        for start in range(0, len(doc.data), BYTE_CHUNK):
            yield doc.data[start : start + BYTE_CHUNK].decode("latin-1")


def _build(opts: TrainOptions):
    """An untrained tokenizer and its trainer. With supertokens the pre-tokenizer splits lines
    only, which keeps each training span (it never holds a line break) whole."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer_kwargs = dict(min_frequency=opts.min_frequency, show_progress=True,
                          special_tokens=list(opts.special_tokens))
    fallback_decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    if opts.kind == "byte":
        tok = Tokenizer(models.BPE(byte_fallback=True))
        tok.decoder = fallback_decoder
        trainer = trainers.BpeTrainer(vocab_size=opts.vocab_size - opts.reserved,
                                      max_token_length=opts.max_token_length or BYTE_MAX_TOKEN,
                                      initial_alphabet=[chr(b) for b in range(256)],
                                      **trainer_kwargs)
        return tok, trainer
    words = LLAMA3_PATTERN if opts.kind == "bpe" else r" ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+"
    split = pre_tokenizers.Split(Regex(LINES if opts.supertokens else words), "isolated")
    if opts.kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = (pre_tokenizers.ByteLevel(add_prefix_space=False)
                             if opts.pretokenizer == "gpt2"
                             else pre_tokenizers.Sequence([split, byte_level]))
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=opts.vocab_size - opts.reserved,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            max_token_length=opts.max_token_length, **trainer_kwargs)
    else:
        tok = Tokenizer(models.BPE(byte_fallback=True))
        tok.pre_tokenizer = split
        tok.decoder = fallback_decoder
        trainer = trainers.BpeTrainer(vocab_size=opts.vocab_size - opts.reserved,
                                      max_token_length=opts.max_token_length or 4,
                                      **trainer_kwargs)
    if opts.nfkc:
        tok.normalizer = normalizers.NFKC()
    return tok, trainer


def _add_byte_fallback(tok):
    """Append the 256 `<0xNN>` tokens to the BPE model's vocabulary and switch byte fallback on."""
    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    ids = list(vocab.values()) + [t["id"] for t in spec["added_tokens"]]
    for token in BYTE_TOKENS:
        if token not in vocab:
            vocab[token] = max(ids) + 1
            ids.append(vocab[token])
    spec["model"]["byte_fallback"] = True
    return Tokenizer.from_str(json.dumps(spec))


def train_tokenizer(corpus: Corpus, opts: TrainOptions):
    """Train on `corpus` and return a `tokenizers.Tokenizer` (training shows progress bars)."""
    from tokenizers import AddedToken

    opts.validate()
    tok, trainer = _build(opts)
    if opts.kind == "byte":
        tok.train_from_iterator(byte_chunks(corpus), trainer=trainer)
        return _add_byte_fallback(tok)
    tok.train_from_iterator(training_texts(corpus, opts), trainer=trainer)
    if opts.kind == "char":
        tok = _add_byte_fallback(tok)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in opts.forced_tokens])
    return tok


def to_transformers(tok, opts: TrainOptions):
    from transformers import PreTrainedTokenizerFast

    eos = opts.special_tokens[0] if opts.special_tokens else None
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos,
                                   pad_token=eos, clean_up_tokenization_spaces=False)


def train_and_save(corpus: Corpus, opts: TrainOptions, out: Path) -> dict:
    """Train, write `out/tokenizer.json` (+ transformers config) and a record of how it was made."""
    start = time.time()
    tok = train_tokenizer(corpus, opts)
    out.mkdir(parents=True, exist_ok=True)
    to_transformers(tok, opts).save_pretrained(out)
    record = {"kind": opts.kind, "vocab_size": tok.get_vocab_size(), "options": asdict(opts),
              "corpus": {"spec": corpus.name, "documents": len(corpus.documents),
                         "bytes": corpus.n_bytes},
              "train_seconds": round(time.time() - start, 1)}
    (out / SIDECAR).write_text(json.dumps(record, indent=2) + "\n")
    return record
