"""`tokenforge tokenizer ...`: the commands exist, run end to end on small inputs, and fail with
messages that say what to do (exit code 2, no traceback)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tokenforge.cli import main


def run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["tokenforge", "tokenizer", *args])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_then_eval_end_to_end(monkeypatch, capsys, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.py").write_text(Path(os.__file__).read_text())
    code, out, _ = run(monkeypatch, capsys, "train", "--kind", "bpe", "--vocab", "300",
                       "--corpus", str(corpus), "--out", str(tmp_path / "tok"))
    assert code == 0 and "300 tokens" in out
    sidecar = json.loads((tmp_path / "tok" / "tokenforge_tokenizer.json").read_text())
    assert sidecar["kind"] == "bpe" and sidecar["corpus"]["documents"] == 1
    code, out, _ = run(monkeypatch, capsys, "eval", "--tokenizer", str(tmp_path / "tok"),
                       "--tokenizer", "cl100k", "--corpus", str(corpus), "--out",
                       str(tmp_path / "eval"))
    assert code == 0 and "| tok |" in out and "| cl100k |" in out
    assert (tmp_path / "eval" / "tokenizers.png").exists()


@pytest.mark.parametrize("args, message", [
    (["train", "--kind", "wordpiece", "--out", "x"], "unknown tokenizer kind 'wordpiece'"),
    (["train", "--vocab", "8192", "--out", "x"], "no corpus given"),
    (["train", "--kind", "byte", "--supertokens", "--out", "x", "--corpus", "elf"],
     "drop --supertokens"),
    (["train", "--corpus", "/no/such/dir", "--out", "x"], "unknown corpus '/no/such/dir'"),
    (["eval", "--corpus", "stdlib:heldout"], "no tokenizer given"),
    (["eval", "--tokenizer", "gpt5", "--corpus", "stdlib:heldout"], "tokenizer 'gpt5' not found"),
    (["transplant", "--tokenizer", "llama3", "--method", "magic", "--out", "x"],
     "unknown method 'magic'"),
    (["transplant", "--model", "/no/model", "--tokenizer", "llama3", "--out", "x"],
     "does not exist"),
])
def test_errors_say_what_to_do(monkeypatch, capsys, args, message):
    code, _, err = run(monkeypatch, capsys, *args)
    assert code == 2
    assert message in err and "Traceback" not in err
