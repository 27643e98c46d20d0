"""The shared training library (a tiny model learns, evaluation and saving) and the demo tokenizer
trained through the tokenizer workshop's trainer (deterministic, round-trips, the shipped format)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import word_tokenizer

from tokenforge.errors import InvalidOptionError
from tokenforge.models.load import DEMO_DIR, load_model
from tokenforge.models.train_demo import TrainConfig, demo_tokenizer, read_text, split_corpus
from tokenforge.models.training import (
    ModelShape,
    Recipe,
    build_model,
    evaluate,
    save_model,
    train_model,
    warmup_cosine,
)
from tokenforge.tokenization.train import TrainOptions

TINY = ModelShape(32, 1, 4, 2, 64, tie_word_embeddings=True)
SAMPLES = ["", "a", "def f(x):\n        return x  # é 日本\n\t\tpass\n", "\x00\x01 \r\n  \x7f",
           "x = f(a) , b . c 's", "ﬁ café 🚀 \u200b\ufeff", "<|endoftext|> inside text"]


def test_warmup_then_cosine_to_a_tenth():
    lrs = [warmup_cosine(step, 100, 1.0, 10) for step in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == lrs[10] == 1.0
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert warmup_cosine(100, 100, 1.0, 10) == pytest.approx(0.1)


def test_a_tiny_model_learns_and_saves(tmp_path):
    torch.manual_seed(0)
    model = build_model(TINY, 96, context=64, eos_id=0)
    stream = np.tile(np.arange(1, 17, dtype=np.int32), 300)  # perfectly predictable
    heldout = stream[:600]
    before = evaluate(model, heldout, 32, 4)
    recipe = Recipe(lr=1e-2, warmup=2, seq_len=32, batch_size=4, eval_windows=4)
    record = train_model(model, stream, heldout, recipe, 30, "tiny", log=lambda _: None)
    curve = record["loss_curve"]
    assert [point["step"] for point in curve] == [0, 29] and curve[-1]["loss"] < curve[0]["loss"]
    assert record["heldout_loss"] < before / 2
    assert math.isfinite(record["heldout_perplexity"])
    assert record["heldout_perplexity"] == round(math.exp(record["heldout_loss"]), 2)
    assert record["tokens_seen"] == 30 * 4 * 32
    assert save_model(model, tmp_path, word_tokenizer()) == (tmp_path / "model.safetensors").stat().st_size
    loaded = load_model(str(tmp_path), device="cpu", dtype="float32")
    assert evaluate(loaded.model, heldout, 32, 4) == pytest.approx(record["heldout_loss"], abs=0.05)


@pytest.fixture(scope="module")
def corpus_slice() -> list[str]:
    """About 150 kB of the demo's training files, in the demo's order."""
    train_files, _, _ = split_corpus(TrainConfig().heldout_every)
    texts: list[str] = []
    while sum(len(t) for t in texts) < 150_000:
        texts.append(read_text(train_files[len(texts)]))
    return texts


def test_demo_tokenizer_is_deterministic_and_round_trips(corpus_slice):
    first, second = demo_tokenizer(corpus_slice, 1024), demo_tokenizer(corpus_slice, 1024)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert len(first) == 1024 and first.eos_token_id == first.pad_token_id == 0
    _, heldout, _ = split_corpus(TrainConfig().heldout_every)
    for text in SAMPLES + [read_text(heldout[0])[:5000]]:
        assert first.decode(first(text, add_special_tokens=False)["input_ids"]) == text


def test_demo_tokenizer_has_the_shipped_format(corpus_slice):
    """Everything but the learned vocabulary and merges is what the bundled demo tokenizer has."""
    def without_learned(spec: dict) -> dict:
        model = {k: v for k, v in spec["model"].items() if k not in ("vocab", "merges")}
        return {**spec, "model": model}

    trained = json.loads(demo_tokenizer(corpus_slice, 1024).backend_tokenizer.to_str())
    shipped = json.loads((DEMO_DIR / "demo" / "tokenizer.json").read_text())
    assert without_learned(trained) == without_learned(shipped)


@pytest.mark.parametrize("opts", [TrainOptions(pretokenizer="gpt3"),
                                  TrainOptions("char", 700, pretokenizer="gpt2"),
                                  TrainOptions(supertokens=True, pretokenizer="gpt2")])
def test_the_gpt2_pretokenizer_is_for_plain_bpe_only(opts):
    with pytest.raises(InvalidOptionError):
        opts.validate()
