"""Reproducible training of the bundled demo assets: tokenizer, `demo` target and `demo-draft`.

Corpus: the Python standard-library source of the running interpreter, test suites excluded.
Whole files are held out for evaluation (chosen by a hash of their relative path, so the split is
stable across runs and machines with the same Python version). Everything is seeded; the record
written next to the weights (`training.json`) holds the corpus hash, Python version, steps, loss
curve, held-out loss/perplexity and wall time, so a run can be compared with the shipped one.

These are demo models for mechanics and benchmarks, not useful assistants.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import sysconfig
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from tokenforge.models.load import DEMO_DIR

EOS = "<|endoftext|>"
TEST_DIRS = {"test", "tests", "idle_test"}


@dataclass
class ModelShape:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    tie_word_embeddings: bool


@dataclass
class TrainConfig:
    vocab_size: int = 8192
    context: int = 1024
    seq_len: int = 512
    batch_size: int = 8
    target_steps: int = 900
    draft_steps: int = 900
    lr: float = 2e-3
    warmup: int = 100
    seed: int = 0
    heldout_every: int = 40  # ~2.5% of files, by path hash
    eval_windows: int = 64
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


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=None, pad_token=EOS,
        model_max_length=1024,
    )


def encode_corpus(tokenizer, texts: list[str]) -> np.ndarray:
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(eos)
    return np.asarray(ids, dtype=np.int32)


def build_model(shape: ModelShape, vocab_size: int, context: int, eos_id: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=context,
        tie_word_embeddings=shape.tie_word_embeddings,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        rope_theta=10000.0,
    )
    return LlamaForCausalLM(config)


def batches(stream: np.ndarray, seq_len: int, batch_size: int, gen: np.random.Generator):
    starts = gen.integers(0, len(stream) - seq_len - 1, size=batch_size)
    block = np.stack([stream[s : s + seq_len + 1] for s in starts])
    x = torch.from_numpy(block[:, :-1].astype(np.int64))
    y = torch.from_numpy(block[:, 1:].astype(np.int64))
    return x, y


@torch.no_grad()
def evaluate(model, stream: np.ndarray, seq_len: int, windows: int) -> float:
    """Mean next-token loss over `windows` non-overlapping windows spread evenly over the whole
    held-out stream (so that every held-out file weighs in, not just the first ones)."""
    model.eval()
    n = min(windows, (len(stream) - 1) // seq_len)
    starts = np.linspace(0, len(stream) - seq_len - 1, n).astype(int)
    losses = []
    for start in starts:
        block = torch.from_numpy(stream[start : start + seq_len + 1].astype(np.int64))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=block[None, :-1]).logits
        losses.append(torch.nn.functional.cross_entropy(logits[0].float(), block[1:]).item())
    model.train()
    return float(np.mean(losses))


def train_step(model, opt, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One bf16-autocast AdamW step on next-token loss, gradients clipped at 1; returns the loss."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=x).logits
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss


def train_model(model, stream, heldout, cfg: TrainConfig, steps: int, name: str, log) -> dict:
    from tqdm import tqdm

    gen = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.1)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, steps - cfg.warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    curve = []
    start = time.time()
    model.train()
    bar = tqdm(range(steps), desc=f"train {name}")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = train_step(model, opt, *batches(stream, cfg.seq_len, cfg.batch_size, gen))
        if step % 50 == 0 or step == steps - 1:
            curve.append({"step": step, "loss": round(loss.item(), 4)})
            bar.set_postfix(loss=f"{loss.item():.3f}")
            log(f"{name} step {step} loss {loss.item():.4f} ({time.time() - start:.0f}s)")
    wall = time.time() - start
    heldout_loss = evaluate(model, heldout, cfg.seq_len, cfg.eval_windows)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        "tokens_seen": steps * cfg.batch_size * cfg.seq_len,
        "loss_curve": curve,
        "heldout_loss": round(heldout_loss, 4),
        "heldout_perplexity": round(math.exp(heldout_loss), 2),
        "wall_time_s": round(wall, 1),
    }


def save_model(model, out: Path, tokenizer) -> int:
    """Save as float16 safetensors (halves the shipped size); returns the weights' byte size."""
    model = model.to(torch.float16)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return (out / "model.safetensors").stat().st_size


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
    tokenizer = train_tokenizer(train_texts, cfg.vocab_size)
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
