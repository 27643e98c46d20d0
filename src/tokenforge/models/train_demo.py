"""Reproducible training of the bundled demo assets: tokenizer, `demo` target and `demo-draft`.

Corpus: the Python standard-library source of the running interpreter, test suites excluded.
Whole files are held out for evaluation (chosen by a hash of their relative path, so the split is
stable across runs and machines with the same Python version). Everything is seeded; the record
written next to the weights (`training.json`) holds the corpus hash, Python version, steps, loss
curve, held-out loss/perplexity and wall time, so a run can be compared with the shipped one.
The tokenizer is trained by the tokenizer workshop (`tokenforge.tokenization.train`), the models by
the shared training library (`tokenforge.models.training`); this module holds the corpus split,
the demo's configuration and the model card.

These are demo models for mechanics and benchmarks, not useful assistants.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sysconfig
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tokenforge.models.load import DEMO_DIR
from tokenforge.models.training import (
    ModelShape,
    Recipe,
    build_model,
    encode_corpus,
    save_model,
    train_model,
)

TEST_DIRS = {"test", "tests", "idle_test"}


@dataclass
class TrainConfig(Recipe):
    """The demo run: `Recipe`'s defaults (lr 2e-3, 100 warm-up steps, batch 8 x 512, seed 0,
    64 evaluation windows) plus the tokenizer, corpus split, step counts and the two shapes."""

    vocab_size: int = 8192
    context: int = 1024
    target_steps: int = 900
    draft_steps: int = 900
    heldout_every: int = 40  # ~2.5% of files, by path hash
    threads: int = 1  # one thread degrades gracefully on a shared 2-core machine; 2 do not
    target: ModelShape = field(
        default_factory=lambda: ModelShape(256, 6, 8, 4, 768, tie_word_embeddings=False)
    )
    draft: ModelShape = field(
        default_factory=lambda: ModelShape(128, 2, 4, 2, 384, tie_word_embeddings=True)
    )


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The stdlib's .py files, sorted, without test suites or site-packages."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if "site-packages" in parts or TEST_DIRS.intersection(parts):
            continue
        files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def is_heldout(relpath: str, every: int) -> bool:
    return int(hashlib.sha1(relpath.encode()).hexdigest(), 16) % every == 0


def split_corpus(every: int, root: Path | None = None) -> tuple[list[Path], list[Path], Path]:
    root = Path(root or sysconfig.get_paths()["stdlib"])
    train, heldout = [], []
    for path in stdlib_files(root):
        (heldout if is_heldout(path.relative_to(root).as_posix(), every) else train).append(path)
    return train, heldout, root


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def demo_tokenizer(texts: list[str], vocab_size: int):
    """The demo's tokenizer: byte-level BPE with GPT-2's pre-tokenizer, no forced tokens, every
    pair eligible for merging, `<|endoftext|>` as BOS, EOS and padding; trained by the tokenizer
    workshop's trainer (`tokenforge.tokenization.train`)."""
    from transformers import PreTrainedTokenizerFast

    from tokenforge.tokenization.corpora import Corpus, Document
    from tokenforge.tokenization.train import TrainOptions, train_tokenizer

    opts = TrainOptions(vocab_size=vocab_size, indent_tokens=False, min_frequency=0,
                        pretokenizer="gpt2")
    corpus = Corpus("stdlib", "code", [Document(str(i), text.encode()) for i, text in enumerate(texts)])
    eos = opts.special_tokens[0]
    return PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(corpus, opts), eos_token=eos, bos_token=eos,
        unk_token=None, pad_token=eos, model_max_length=1024,
    )


def train_demo(out: Path = DEMO_DIR, cfg: TrainConfig | None = None, log=print) -> dict:
    cfg = cfg or TrainConfig()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    train_files, heldout_files, root = split_corpus(cfg.heldout_every)
    rel = [p.relative_to(root).as_posix() for p in train_files + heldout_files]
    corpus_hash = hashlib.sha256("\n".join(rel).encode()).hexdigest()
    log(f"corpus: {len(train_files)} training files, {len(heldout_files)} held out, from {root}")

    t0 = time.time()
    train_texts = [read_text(p) for p in train_files]
    tokenizer = demo_tokenizer(train_texts, cfg.vocab_size)
    stream = encode_corpus(tokenizer, train_texts)
    heldout = encode_corpus(tokenizer, [read_text(p) for p in heldout_files])
    log(f"tokenizer trained: {len(tokenizer)} tokens; {len(stream)} training tokens, "
        f"{len(heldout)} held-out tokens ({time.time() - t0:.0f}s)")

    record: dict = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "corpus": {
            "root": "stdlib of the training interpreter",
            "file_list_sha256": corpus_hash,
            "train_files": len(train_files),
            "heldout_files": [p.relative_to(root).as_posix() for p in heldout_files],
            "train_tokens": int(len(stream)),
            "heldout_tokens": int(len(heldout)),
        },
        "config": asdict(cfg),
        "models": {},
    }
    eos = tokenizer.eos_token_id
    for name, shape, steps in (("demo", cfg.target, cfg.target_steps),
                               ("demo-draft", cfg.draft, cfg.draft_steps)):
        model = build_model(shape, len(tokenizer), cfg.context, eos)
        stats = train_model(model, stream, heldout, cfg, steps, name, log)
        stats["file_bytes"] = save_model(model, out / name, tokenizer)
        record["models"][name] = stats
        log(f"{name}: {stats['parameters']:,} params, held-out ppl {stats['heldout_perplexity']}")
    record["total_wall_time_s"] = round(time.time() - t0, 1)
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(record))
    return record


def describe(shape: dict) -> str:
    tied = "tied" if shape["tie_word_embeddings"] else "separate"
    return (f"hidden {shape['hidden_size']}, {shape['num_hidden_layers']} layers, "
            f"{shape['num_attention_heads']} heads ({shape['num_key_value_heads']} KV heads), "
            f"MLP {shape['intermediate_size']}, {tied} input/output embeddings")


def model_card(record: dict) -> str:
    rows = "\n".join(
        f"| `{name}` | {m['parameters']:,} | {m['steps']} | {m['tokens_seen']:,} | "
        f"{m['heldout_loss']} | {m['heldout_perplexity']} | {m['wall_time_s'] / 60:.0f} min | "
        f"{m['file_bytes'] / 1e6:.1f} MB |"
        for name, m in record["models"].items())
    cfg, corpus = record["config"], record["corpus"]
    note = f"- Note: {record['heldout_note']}\n" if "heldout_note" in record else ""
    return f"""# tokenforge demo models

**These are demo models for mechanics and benchmarks, not useful assistants.** They continue
Python source in the style of the standard library, often plausibly, never reliably. Use them to
see decoding methods work, to test, and to benchmark; do not use their output for anything.

| model | parameters | steps | tokens seen | held-out loss | held-out perplexity | training | weights |
|---|---|---|---|---|---|---|---|
{rows}

- Architecture: Llama (RoPE, SwiGLU, grouped-query attention), context {cfg['context']} positions,
  trained on windows of {cfg['seq_len']} tokens. `demo`: {describe(cfg['target'])}.
  `demo-draft`: {describe(cfg['draft'])}.
  Weights are stored as float16 safetensors and load as float32 on a CPU.
- Tokenizer: byte-level BPE, {cfg['vocab_size']} tokens (HF `tokenizers`), one special token
  `<|endoftext|>` (BOS, EOS and padding), shared by both models.
- Corpus: the `.py` files of the Python {record['python']} standard library of the training
  interpreter, test suites (`test`, `tests`, `idle_test`) and site-packages excluded;
  {corpus['train_files']} training files ({corpus['train_tokens']:,} tokens) and
  {len(corpus['heldout_files'])} whole files held out by path hash ({corpus['heldout_tokens']:,}
  tokens), file-list SHA-256 `{corpus['file_list_sha256'][:16]}…`. The held-out files are listed in
  `training.json`; held-out loss is the mean next-token loss over {cfg['eval_windows']} windows.
- Training: AdamW (lr {cfg['lr']}, cosine to 10%, {cfg['warmup']} warm-up steps, weight decay 0.1),
  batch {cfg['batch_size']} x {cfg['seq_len']} tokens, bfloat16 autocast on CPU, seed
  {cfg['seed']}, {cfg['threads']} thread(s), torch {record['torch']}; total wall time
  {record['total_wall_time_s'] / 60:.0f} min on a 2-core CPU shared with other work.
{note}- Reproduce: `tokenforge train-demo` (writes these files, `training.json` with the loss curves,
  and this card). Results match when the Python version (hence the corpus) is the same.
- Licence: the corpus is the CPython standard library (PSF License); the weights are released with
  tokenforge.
"""
