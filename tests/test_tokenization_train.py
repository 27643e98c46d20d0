"""Tokenizer training: every kind round-trips (fixed inputs and property tests with random bytes
and random Unicode), loads in transformers, and keeps its kind's promises."""

from __future__ import annotations

import sysconfig
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from tokenforge.errors import InvalidOptionError
from tokenforge.tokenization.corpora import Corpus, Document, load_corpus
from tokenforge.tokenization.train import BYTE_MAX_TOKEN, INDENT_RUNS, TrainOptions, train_and_save

PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
SAMPLES = ["", "a", "def f(x):\n        return x  # é 日本\n\t\tpass\n", "\x00\x01 \r\n  \x7f",
           "ﬁ café 🚀 \u200b\ufeff", "    " * 9 + "deep", "<|endoftext|> inside text"]


def elf_corpus() -> Corpus:
    """A few of the interpreter's own extension modules (ELF shared objects), 64 KiB each."""
    dynload = Path(sysconfig.get_paths()["stdlib"]) / "lib-dynload"
    files = sorted(dynload.glob("*.so"))[:4]
    docs = [Document(str(p), p.read_bytes()[: 64 << 10]) for p in files]
    assert docs and all(d.data[:4] == b"\x7fELF" for d in docs)
    return Corpus("elf-sample", "binary", docs)


@pytest.fixture(scope="module")
def code() -> Corpus:
    return load_corpus("stdlib", max_bytes=200_000)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, code) -> dict[str, Path]:
    """One small tokenizer per kind and a supertoken BPE, saved as transformers loads them."""
    specs = {
        "bpe": (code, TrainOptions("bpe", 2000)),
        "bpe-super": (code, TrainOptions("bpe", 2000, supertokens=True)),
        "byte": (elf_corpus(), TrainOptions("byte", 800, min_frequency=3)),
        "char": (code, TrainOptions("char", 700)),
    }
    out = {}
    for name, (corpus, opts) in specs.items():
        out[name] = tmp_path_factory.mktemp(name)
        train_and_save(corpus, opts, out[name])
    return out


@pytest.fixture(scope="module")
def tokenizers(trained):
    return {name: AutoTokenizer.from_pretrained(path) for name, path in trained.items()}


def roundtrip(tok, text: str) -> str:
    return tok.decode(tok(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("name", ["bpe", "bpe-super", "byte", "char"])
def test_every_kind_loads_in_transformers_and_round_trips(tokenizers, name):
    tok = tokenizers[name]
    assert len(tok) == {"bpe": 2000, "bpe-super": 2000, "byte": 800, "char": 700}[name]
    assert sorted(tok.get_vocab().values()) == list(range(len(tok)))  # no gaps: one row per id
    for text in SAMPLES:
        assert roundtrip(tok, text) == text


@pytest.mark.parametrize("name", ["bpe", "bpe-super", "byte", "char"])
def test_random_unicode_round_trips(tokenizers, name):
    tok = tokenizers[name]

    @PROPERTY
    @given(st.text(max_size=200))
    def check(text):
        assert roundtrip(tok, text) == text

    check()


def test_random_bytes_round_trip_through_the_byte_tokenizer(tokenizers):
    tok = tokenizers["byte"]

    @PROPERTY
    @given(st.binary(max_size=400))
    def check(data):
        assert roundtrip(tok, data.decode("latin-1")).encode("latin-1") == data

    check()
    binary = elf_corpus().documents[0].data[:20000]
    ids = tok(binary.decode("latin-1"), add_special_tokens=False)["input_ids"]
    assert tok.decode(ids).encode("latin-1") == binary
    assert len(binary) / len(ids) > 1.5  # merges learned on ELF files compress ELF files


def test_byte_tokens_are_at_most_16_bytes(tokenizers):
    vocab = tokenizers["byte"].get_vocab()
    learned = [t for t in vocab if not t.startswith("<")]
    assert max(len(t) for t in learned) <= BYTE_MAX_TOKEN
    assert all(chr(b) in vocab for b in range(256))


def test_char_tokens_are_at_most_four_characters(tokenizers):
    learned = [t for t in tokenizers["char"].get_vocab() if not t.startswith("<")]
    assert max(len(t) for t in learned) <= 4


def test_indentation_runs_are_single_tokens(tokenizers):
    tok = tokenizers["bpe"]
    for run in INDENT_RUNS:
        assert len(tok(run, add_special_tokens=False)["input_ids"]) == 1


def test_supertokens_cross_whitespace_and_compress_more(tokenizers, code):
    def crossing(name):
        return [t for t in tokenizers[name].get_vocab() if "Ġ" in t.strip("Ġ")]

    assert len(crossing("bpe-super")) > 20 and not crossing("bpe")
    text = b"".join(d.data for d in code.documents[:5]).decode()
    counts = {n: len(tokenizers[n](text)["input_ids"]) for n in ("bpe", "bpe-super")}
    assert counts["bpe-super"] < counts["bpe"]


def test_learned_tokens_never_swallow_forced_indentation(tokenizers):
    vocab = tokenizers["bpe"].get_vocab()
    assert not [t for t in vocab if "ĠĠĠĠ" in t]  # four spaces are always the forced token


def test_nfkc_round_trips_normalised_text(tmp_path, code):
    train_and_save(code, TrainOptions("bpe", 600, nfkc=True), tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    text = "ﬁle ½ Ⅳ café"
    assert roundtrip(tok, text) == unicodedata.normalize("NFKC", text)


@pytest.mark.parametrize("opts, message", [
    (TrainOptions("bpe", 100), "too small"),
    (TrainOptions("byte", 8192, supertokens=True), "binaries have no words"),
    (TrainOptions("byte", 8192, nfkc=True), "--nfkc"),
    (TrainOptions("wordpiece", 8192), "unknown tokenizer kind"),
])
def test_invalid_options_say_what_to_do(opts, message):
    with pytest.raises(InvalidOptionError, match=message):
        opts.validate()
