"""`tokenforge tokenizer train | eval | transplant`: the tokenizer workshop's commands.

The papers behind each command are named in the modules they call: `train` (KL3M tokenizers,
Binary BPE, TokenAdapt's Supertokens), `evaluate` (KL3M's intrinsic measures) and `transplant`
(mergekit tokensurgeon's OMP, TokenAdapt). Heavy imports happen inside the commands so that
`tokenforge --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tokenforge.errors import InvalidOptionError

MB = 1 << 20


def _corpus(specs: list[str] | None, max_mb: float):
    from tokenforge.tokenization.corpora import Corpus, load_corpus

    if not specs:
        raise InvalidOptionError("no corpus given: pass --corpus PATH (or stdlib, site-packages, "
                                 "elf, legal, each optionally with :heldout)")
    corpora = [load_corpus(s, max_bytes=int(max_mb * MB)) for s in specs]
    if len({c.kind for c in corpora}) > 1:
        raise InvalidOptionError("mixing binary and text corpora in one run is not supported: "
                                 "train or evaluate them separately")
    return Corpus("+".join(specs), corpora[0].kind, [d for c in corpora for d in c.documents])


CORPUS_HELP = "file, folder or stdlib|site-packages|elf|legal[:heldout]; repeatable"
TOKENIZER_HELP = "tokenizer.json, its folder, demo, or o200k|cl100k|llama3|qwen3"
EVAL_OUT = Path("out/tokenizer-eval")  # under out/, which git ignores


def train(
    out: Annotated[Path, typer.Option(help="output folder for tokenizer.json")],
    corpus: Annotated[list[str] | None, typer.Option(help=CORPUS_HELP)] = None,
    kind: Annotated[str, typer.Option(help="bpe (domain, byte-level), byte (binaries) or char")] =
    "bpe",
    vocab: Annotated[int, typer.Option(help="vocabulary size, special and byte tokens "
                                            "included")] = 8192,
    supertokens: Annotated[bool, typer.Option(help="learn multi-word tokens across "
                                                   "whitespace")] = False,
    nfkc: Annotated[bool, typer.Option(help="NFKC-normalise (round-trip then holds for NFKC "
                                            "text only)")] = False,
    special_token: Annotated[list[str] | None, typer.Option(
        help="special token (repeatable); default <|endoftext|>")] = None,
    indent_tokens: Annotated[bool, typer.Option(help="bpe: force tokens for indentation "
                                                     "runs")] = True,
    min_frequency: Annotated[int, typer.Option(help="minimum pair count for a merge")] = 2,
    max_token_length: Annotated[int | None, typer.Option(
        help="char: longest token in characters (default 4); bpe: optional cap")] = None,
    max_mb: Annotated[float, typer.Option(help="read at most this many MiB per corpus")] = 64.0,
    seed: Annotated[int, typer.Option(help="seed for supertoken spans")] = 0,
):
    """Train a tokenizer and write OUT/tokenizer.json (loadable by transformers)."""
    from tokenforge.tokenization.train import EOS, TrainOptions, train_and_save

    opts = TrainOptions(kind=kind, vocab_size=vocab, special_tokens=tuple(special_token or [EOS]),
                        nfkc=nfkc, indent_tokens=indent_tokens, supertokens=supertokens,
                        min_frequency=min_frequency, max_token_length=max_token_length, seed=seed)
    opts.validate()
    data = _corpus(corpus, max_mb)
    typer.echo(f"training a {kind} tokenizer ({vocab} tokens) on {len(data.documents)} documents, "
               f"{data.n_bytes / MB:.1f} MiB", err=True)
    record = train_and_save(data, opts, out)
    typer.echo(f"wrote {out / 'tokenizer.json'}: {record['vocab_size']} tokens in "
               f"{record['train_seconds']}s")


def evaluate(
    tokenizer: Annotated[list[str] | None, typer.Option(help=TOKENIZER_HELP + "; repeatable")] =
    None,
    corpus: Annotated[list[str] | None, typer.Option(help=CORPUS_HELP)] = None,
    out: Annotated[Path, typer.Option(help="folder for table.md, results.json, "
                                           "tokenizers.png")] = EVAL_OUT,
    baseline: Annotated[str | None, typer.Option(
        help="tokenizer the others' token counts are compared with (default: the first)")] = None,
    max_mb: Annotated[float, typer.Option(help="read at most this many MiB per corpus")] = 8.0,
):
    """Compare tokenizers: bytes/token, tokens/document, vocabulary use, identifier fertility."""
    from tokenforge.tokenization.corpora import load_corpus
    from tokenforge.tokenization.evaluate import measure, write_report
    from tokenforge.tokenization.handles import load_handle

    if not tokenizer:
        raise InvalidOptionError("no tokenizer given: pass --tokenizer (repeatable), e.g. "
                                 "--tokenizer demo --tokenizer o200k")
    if not corpus:
        raise InvalidOptionError("no corpus given: pass --corpus (repeatable), e.g. "
                                 "--corpus stdlib:heldout")
    handles = [load_handle(t) for t in tokenizer]
    corpora = [load_corpus(c, max_bytes=int(max_mb * MB)) for c in corpus]
    rows = [measure(h, c) for c in corpora for h in handles]
    table = write_report(rows, out, baseline or handles[0].name)
    typer.echo(table)
    typer.echo(f"wrote {out / 'table.md'}, {out / 'results.json'}, {out / 'tokenizers.png'}")


def transplant(
    tokenizer: Annotated[str, typer.Option(help="the new tokenizer: " + TOKENIZER_HELP)],
    out: Annotated[Path, typer.Option(help="output folder (safetensors + tokenizer)")],
    model: Annotated[str, typer.Option(help="base model: demo, a folder or a hub id")] = "demo",
    method: Annotated[str, typer.Option(help="omp, tokenadapt, subword-mean, mean or zero")] =
    "omp",
    donor: Annotated[str | None, typer.Option(
        help="omp: a model that uses the new tokenizer (default: train one at draft size)")] =
    None,
    donor_corpus: Annotated[str, typer.Option(help="omp: corpus of the trained donor")] =
    "stdlib",
    donor_steps: Annotated[int, typer.Option(help="omp: training steps of the trained "
                                                  "donor")] = 1000,
    k: Annotated[int | None, typer.Option(
        help="omp: atoms per token (default 32); tokenadapt: neighbours (default 8)")] = None,
):
    """Give a model a new tokenizer: new embedding and LM-head rows, everything else kept."""
    from tokenforge.tokenization.transplant import METHODS, TransplantOptions, run_transplant

    if method not in METHODS:
        raise InvalidOptionError(f"unknown method '{method}': use one of {', '.join(METHODS)}")
    opts = TransplantOptions(method=method, donor=donor, donor_corpus=donor_corpus,
                             donor_steps=donor_steps, k=k)
    report = run_transplant(model, tokenizer, opts, out)
    typer.echo(f"wrote {out}: {report.summary()}")


def register(app: typer.Typer) -> None:
    sub = typer.Typer(no_args_is_help=True, add_completion=False,
                      help="Train, compare and transplant tokenizers.")
    sub.command("train")(train)
    sub.command("eval")(evaluate)
    sub.command("transplant")(transplant)
    app.add_typer(sub, name="tokenizer")
