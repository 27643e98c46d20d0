"""Tokenizer comparison: corpora, the reference encodings (and their transformers conversion, token
for token), the metrics and the report files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tokenforge.errors import InvalidOptionError
from tokenforge.tokenization.corpora import Corpus, Document, as_text, load_corpus
from tokenforge.tokenization.evaluate import identifier_tokens, measure, write_report
from tokenforge.tokenization.handles import Encoded, load_handle, reference_token_bytes
from tokenforge.tokenization.vocab import reference_tokenizer, token_bytes

CODE = Document("snippet.py",
                "def parse_header(raw_bytes):\n    return raw_bytes.split(b':')  # é\n".encode())


@pytest.fixture(scope="module")
def heldout() -> Corpus:
    return load_corpus("stdlib:heldout", max_bytes=120_000)


@pytest.fixture(scope="module")
def llama3_hf():
    return reference_tokenizer("llama3")


def test_stdlib_split_matches_the_demo_models_heldout_files():
    from tokenforge.models.load import DEMO_DIR
    from tokenforge.models.train_demo import TrainConfig, split_corpus

    _, held, root = split_corpus(TrainConfig().heldout_every)
    corpus = load_corpus("stdlib:heldout")
    assert sorted(d.name for d in corpus.documents) == sorted(str(p) for p in held)
    record = DEMO_DIR / "training.json"
    if record.exists():  # the shipped record lists the files the demo model never saw
        listed = json.loads(record.read_text())["corpus"]["heldout_files"]
        assert sorted(str(root / f) for f in listed) == sorted(d.name for d in corpus.documents)
    train = {d.name for d in load_corpus("stdlib", max_bytes=2_000_000).documents}
    assert not train & {d.name for d in corpus.documents}


def test_corpus_budget_and_unknown_names(tmp_path):
    (tmp_path / "a.txt").write_text("x" * 1000)
    (tmp_path / "b.txt").write_text("y" * 1000)
    assert len(load_corpus(str(tmp_path), max_bytes=500).documents) == 1
    assert load_corpus(str(tmp_path)).kind == "text"
    with pytest.raises(InvalidOptionError, match="unknown corpus 'nope'"):
        load_corpus("nope")


def test_binary_text_is_latin1_and_lossless():
    data = bytes(range(256))
    assert as_text(data).encode("latin-1") == data
    assert as_text("é".encode()) == "é"


def test_reference_conversion_matches_quicktok_token_for_token(llama3_hf, heldout):
    handle = load_handle("llama3")
    docs = [d.data for d in heldout.documents] + [CODE.data, "日本語 🚀 can't\r\n\t 12345".encode()]
    for data, enc in zip(docs, handle.encode(docs), strict=True):
        assert llama3_hf(as_text(data), add_special_tokens=False)["input_ids"] == enc.ids.tolist()
    assert token_bytes(llama3_hf) == reference_token_bytes("llama3")
    assert llama3_hf.eos_token == "<|end_of_text|>"


def test_identifier_fertility_counts_overlapping_tokens():
    data = b"foo = bar_baz"
    # tokens: "foo" | " =" | " bar" | "_baz"
    enc = Encoded(np.arange(4), np.array([3, 5, 9, 13]))
    assert identifier_tokens(data, enc) == (2, 3)


def test_measure_agrees_between_quicktok_and_tokenizer_json(tmp_path, llama3_hf):
    llama3_hf.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    corpus = Corpus("code", "code", [CODE])
    a, b = measure(load_handle("llama3"), corpus), measure(load_handle(str(tmp_path)), corpus)
    assert (a.tokens, a.used_ids, a.identifiers, a.identifier_tokens) == \
           (b.tokens, b.used_ids, b.identifiers, b.identifier_tokens)
    assert a.bytes_per_token == len(CODE.data) / a.tokens
    assert a.fertility and a.fertility >= 1.0


def test_report_files(tmp_path, heldout):
    rows = [measure(load_handle(name), heldout) for name in ("o200k", "cl100k")]
    table = write_report(rows, tmp_path, baseline="o200k")
    assert "| stdlib:heldout | o200k |" in table and "+0.0%" in table
    assert (tmp_path / "tokenizers.png").stat().st_size > 10_000
    records = json.loads((tmp_path / "results.json").read_text())
    assert {r["tokenizer"] for r in records} == {"o200k", "cl100k"}
    assert all(3.0 < r["bytes_per_token"] < 6.0 for r in records)


def test_unknown_tokenizer_says_what_to_pass():
    with pytest.raises(InvalidOptionError, match="tokenizer.json.*o200k"):
        load_handle("/no/such/tokenizer")
