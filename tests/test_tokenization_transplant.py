"""Transplantation on tiny models: shapes and vocabulary of every method, copied rows, OMP's exact
recovery of sparse combinations, TokenAdapt's weights, tied heads, bits per byte, save and load."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from tokenforge.errors import InvalidOptionError
from tokenforge.models.load import load_model
from tokenforge.models.train_demo import TrainConfig
from tokenforge.tokenization.corpora import load_corpus
from tokenforge.tokenization.lm import Donor, Stream, bits_per_byte, encode_stream, train_donor
from tokenforge.tokenization.omp import batch_omp, omp_combination
from tokenforge.tokenization.plan import make_plan
from tokenforge.tokenization.tokenadapt import tokenadapt_combination
from tokenforge.tokenization.train import (
    TrainOptions,
    to_transformers,
    train_and_save,
    train_tokenizer,
)
from tokenforge.tokenization.transplant import (
    METHODS,
    TransplantOptions,
    combination,
    run_transplant,
    transplant,
)


@pytest.fixture(scope="module")
def code():
    return load_corpus("stdlib", max_bytes=150_000)


@pytest.fixture(scope="module")
def old_tok(code):
    return to_transformers(train_tokenizer(code, TrainOptions("bpe", 400, indent_tokens=False)),
                           TrainOptions())


@pytest.fixture(scope="module")
def new_dir(code, tmp_path_factory):
    out = tmp_path_factory.mktemp("new-tokenizer")
    train_and_save(code, TrainOptions("bpe", 520), out)
    return out


@pytest.fixture(scope="module")
def new_tok(new_dir):
    from tokenforge.tokenization.transplant import load_new_tokenizer

    return load_new_tokenizer(str(new_dir))[0]


def base(family: str, old_tok):
    loaded = tiny_model(family, vocab_size=len(old_tok), eos=old_tok.eos_token_id)
    loaded.model.float()
    loaded.tokenizer = old_tok
    return loaded


@pytest.fixture(scope="module")
def plan(old_tok, new_tok):
    return make_plan(old_tok, new_tok)


def synthetic_donor(plan, dim: int = 64) -> tuple[Donor, dict]:
    """Unshared tokens are exact 3-sparse combinations of shared ones in the donor's space;
    returns the donor and, per unshared token, (positions in shared_new, coefficients)."""
    gen = torch.Generator().manual_seed(0)
    emb = torch.zeros(plan.new_vocab, dim, dtype=torch.float64)
    emb[plan.shared_new] = torch.randn(len(plan.shared_new), dim, generator=gen,
                                       dtype=torch.float64)
    truth = {}
    for i in plan.unshared.tolist():
        pick = torch.randperm(len(plan.shared_new), generator=gen)[:3]
        coef = torch.randn(3, generator=gen, dtype=torch.float64)
        emb[i] = coef @ emb[plan.shared_new[pick]]
        truth[i] = (pick, coef)
    return Donor(emb, torch.full((plan.new_vocab,), float("inf")), {}), truth


def test_plan_shares_bytes_and_maps_end_of_text_by_role(plan, old_tok, new_tok):
    assert len(plan.shared_new) + len(plan.unshared) == len(new_tok)
    assert len(plan.shared_new) >= 257  # the 256 bytes and end-of-text
    for n, o in zip(plan.shared_new.tolist(), plan.shared_old.tolist(), strict=True):
        assert plan.new_bytes[n] == plan.old_bytes[o] or n == new_tok.eos_token_id
    for i in plan.unshared.tolist():
        assert b"".join(plan.old_bytes[p] for p in plan.pieces[i]) == plan.new_bytes[i]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_every_method_gives_the_new_vocabulary_and_keeps_shared_rows(method, family, old_tok,
                                                                      new_tok, plan):
    loaded = base(family, old_tok)
    model, report = transplant(loaded, new_tok, method, donor=synthetic_donor(plan)[0], k=4,
                               plan=plan)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    old = loaded.model.get_input_embeddings().weight
    assert emb.shape == (len(new_tok), old.shape[1]) and head.shape == emb.shape
    assert model.config.vocab_size == len(new_tok)
    assert model.config.eos_token_id == new_tok.eos_token_id
    assert torch.equal(emb[plan.shared_new], old[plan.shared_old])
    assert report.shared + report.approximated == len(new_tok)
    assert (head.data_ptr() == emb.data_ptr()) == (family == "gpt2")  # tying survives
    assert loaded.model.get_input_embeddings().weight.shape[0] == len(old_tok)  # base untouched
    rows = emb[plan.unshared]
    if method == "zero":
        assert not rows.any()
    elif method == "mean":
        assert torch.allclose(rows, old.mean(0).expand_as(rows), atol=1e-6)
    elif method == "subword-mean":
        i = plan.unshared[0].item()
        assert torch.allclose(emb[i], old[plan.pieces[i]].mean(0), atol=1e-6)
    with torch.no_grad():
        ids = torch.tensor([new_tok("def f(x): return x")["input_ids"]])
        assert model(input_ids=ids).logits.shape[-1] == len(new_tok)


def test_batch_omp_recovers_sparse_combinations():
    gen = torch.Generator().manual_seed(1)
    atoms = torch.randn(50, 16, generator=gen, dtype=torch.float64)
    coef = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    picks = torch.stack([torch.randperm(50, generator=gen)[:3] for _ in range(8)])
    targets = torch.einsum("bk,bkd->bd", coef, atoms[picks])
    index, found = batch_omp(targets, atoms, 3)
    rebuilt = torch.einsum("bk,bkd->bd", found, atoms[index])
    assert torch.allclose(rebuilt, targets, atol=1e-8)
    assert all(set(a.tolist()) == set(b.tolist()) for a, b in zip(index, picks, strict=True))


def test_omp_carries_donor_coefficients_to_the_base_and_falls_back_for_unseen(plan):
    donor, truth = synthetic_donor(plan)
    unseen = plan.unshared[0].item()
    donor.exposures[unseen] = 0.0
    comb, fallback = omp_combination(plan, donor, k=3)
    assert fallback == 1
    assert omp_combination(plan, donor, k=3, min_exposures=float("inf"))[1] == len(plan.unshared)
    base_rows = torch.randn(len(plan.old_bytes), 8, dtype=torch.float64)
    rows = dict(zip(comb.new_ids.tolist(), comb.apply(base_rows), strict=True))
    for i in plan.unshared[1:].tolist():  # the base row is the donor's combination, carried over
        pick, coef = truth[i]
        assert torch.allclose(rows[i], coef @ base_rows[plan.shared_old[pick]], atol=1e-4)
    assert torch.allclose(rows[unseen], base_rows[plan.pieces[unseen]].mean(0), atol=1e-6)


def test_tokenadapt_weights_mix_local_and_global(plan):
    comb = tokenadapt_combination(plan)
    assert torch.allclose(comb.weight.sum(1), torch.ones(len(comb.new_ids)), atol=1e-5)
    i = 0
    pieces = plan.pieces[comb.new_ids[i].item()]
    assert comb.weight[i, : len(pieces)].sum().item() == pytest.approx(0.7, abs=1e-5)


def test_bits_per_byte_scores_every_content_token_once(old_tok):
    loaded = base("llama", old_tok)
    stream = encode_stream(old_tok, [b"def f(x):\n    return x\n", b"import os\n"])
    assert isinstance(stream, Stream) and stream.ids[0] == old_tok.eos_token_id
    whole = bits_per_byte(loaded.model, stream, seq_len=512)
    windows = bits_per_byte(loaded.model, stream, seq_len=4)
    assert whole > 0 and windows > 0
    with torch.no_grad():
        ids = torch.from_numpy(stream.ids)[None]
        logits = loaded.model(input_ids=ids[:, :-1]).logits[0].float()
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
    content = ids[0, 1:] != old_tok.eos_token_id
    expected = nll[content].sum().item() / torch.log(torch.tensor(2.0)).item() / stream.n_bytes
    assert whole == pytest.approx(expected, rel=0.02)  # bf16 autocast


def test_donor_training_counts_exposures(new_tok, code):
    docs = [d.data for d in code.documents]
    train, held = encode_stream(new_tok, docs[1:]), encode_stream(new_tok, docs[:1])
    cfg = TrainConfig(seq_len=32, batch_size=2, warmup=1, eval_windows=1)
    donor = train_donor(train, held, len(new_tok), steps=3, cfg=cfg)
    assert donor.embeddings.shape == (len(new_tok), cfg.draft.hidden_size)
    seen = 3 * 2 * 32  # tokens the run read
    assert donor.exposures.sum().item() == pytest.approx(seen, rel=1e-4)
    eos_count = int((train.ids == train.eos_id).sum())
    assert donor.exposures[train.eos_id].item() == pytest.approx(eos_count * seen / len(train.ids))
    unseen = sorted(set(range(len(new_tok))) - set(train.ids.tolist()) - set(held.ids.tolist()))
    assert unseen and not donor.embeddings[unseen].any()


def test_run_transplant_writes_a_loadable_model(tmp_path, old_tok, new_dir, new_tok):
    loaded = base("llama", old_tok)
    loaded.model.save_pretrained(tmp_path / "base")
    old_tok.save_pretrained(tmp_path / "base")
    report = run_transplant(str(tmp_path / "base"), str(new_dir),
                            TransplantOptions(method="subword-mean"), tmp_path / "out")
    again = load_model(str(tmp_path / "out"), device="cpu")
    assert again.model.get_input_embeddings().weight.shape[0] == len(new_tok) == report.new_vocab
    assert again.tokenizer("def f(x): pass")["input_ids"] == new_tok("def f(x): pass")["input_ids"]
    assert json.loads((tmp_path / "out" / "transplant.json").read_text())["report"]["method"] == \
        "subword-mean"


def test_run_transplant_trains_its_own_omp_donor(tmp_path, old_tok, new_dir, new_tok):
    loaded = base("llama", old_tok)
    loaded.model.save_pretrained(tmp_path / "base")
    old_tok.save_pretrained(tmp_path / "base")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("os.py", "ast.py"):
        (corpus / name).write_bytes((Path(os.__file__).parent / name).read_bytes())
    opts = TransplantOptions(method="omp", donor_corpus=str(corpus), donor_steps=2)
    report = run_transplant(str(tmp_path / "base"), str(new_dir), opts, tmp_path / "out")
    assert report.method == "omp" and report.new_vocab == len(new_tok)
    assert 0 < report.fallback < report.approximated  # tokens absent from the corpus


def test_unknown_method_and_missing_donor(plan):
    with pytest.raises(InvalidOptionError, match="unknown method 'magic'"):
        transplant(None, None, "magic")
    with pytest.raises(InvalidOptionError, match="omp needs a donor"):
        combination("omp", plan, None, None)
