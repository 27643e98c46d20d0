"""The training library shared by the demo models (`train_demo`), distilled drafts (`distill`) and
the tokenizer workshop's donor and recovery runs (`tokenization.lm`).

A Llama of a given shape, a token stream cut into random windows, one AdamW step on next-token loss
under bfloat16 autocast on the CPU, a seeded run with linear warm-up and cosine decay that returns
its record (loss curve, held-out loss and perplexity, wall time), and saving as float16
safetensors. Seeding the weights is the caller's (torch.manual_seed before build_model);
`Recipe.seed` fixes the order of the batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class ModelShape:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    tie_word_embeddings: bool


@dataclass
class Recipe:
    """How a model is trained: peak learning rate and warm-up steps, windows per step and their
    length, the seed of the batch order, and the held-out windows evaluation reads. The defaults
    are the demo models' recipe."""

    lr: float = 2e-3
    warmup: int = 100
    seq_len: int = 512
    batch_size: int = 8
    seed: int = 0
    eval_windows: int = 64


def encode_corpus(tokenizer, texts: list[str]) -> np.ndarray:
    """One token stream: each text's ids (no added specials) followed by the EOS id."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(eos)
    return np.asarray(ids, dtype=np.int32)


def build_model(shape: ModelShape, vocab_size: int, context: int, eos_id: int):
    """A freshly initialised LlamaForCausalLM; `eos_id` is also its BOS and padding id."""
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


def batches(stream: np.ndarray, seq_len: int, batch_size: int,
            gen: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` random windows of the stream: inputs and next-token targets (int64)."""
    starts = gen.integers(0, len(stream) - seq_len - 1, size=batch_size)
    block = np.stack([stream[s : s + seq_len + 1] for s in starts])
    x = torch.from_numpy(block[:, :-1].astype(np.int64))
    y = torch.from_numpy(block[:, 1:].astype(np.int64))
    return x, y


def adamw(model, lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95),
                             weight_decay=weight_decay)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def warmup_cosine(step: int, steps: int, peak: float, warmup: int) -> float:
    """Learning rate of `step`: linear warm-up to `peak`, then cosine decay to 10% of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def optimizer_step(model, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """Backpropagate `loss` and step, gradients clipped at norm 1."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def next_token_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy under bf16 autocast."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=x).logits
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())


def train_step(model, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One bf16-autocast step on next-token loss; returns the loss."""
    loss = next_token_loss(model, x, y)
    optimizer_step(model, opt, loss)
    return loss


def run_steps(model, opt: torch.optim.Optimizer, steps: int, peak_lr: float, warmup: int,
              step_loss: Callable[[int], torch.Tensor | tuple[torch.Tensor, dict]], name: str,
              log=None, every: int = 50) -> tuple[list[dict], float]:
    """The training loop every tokenforge model shares: each step sets the warm-up + cosine
    learning rate, takes `step_loss(step)` (a loss, or the loss and extra figures for the curve)
    and steps the optimizer (gradients clipped at 1); every `every` steps and at the last, the
    loss goes into the curve, the progress bar and `log`. Returns (curve, wall seconds)."""
    from tqdm import tqdm

    curve, start = [], time.time()
    model.train()
    bar = tqdm(range(steps), desc=f"train {name}")
    for step in bar:
        set_lr(opt, warmup_cosine(step, steps, peak_lr, warmup))
        out = step_loss(step)
        loss, extra = out if isinstance(out, tuple) else (out, {})
        optimizer_step(model, opt, loss)
        if step % every == 0 or step == steps - 1:
            curve.append({"step": step, "loss": round(loss.item(), 4),
                          **{key: round(value, 4) for key, value in extra.items()}})
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if log is not None:
                log(f"{name} step {step} loss {loss.item():.4f} ({time.time() - start:.0f}s)")
    return curve, time.time() - start


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


def train_model(model, stream: np.ndarray, heldout: np.ndarray, recipe: Recipe, steps: int,
                name: str, log) -> dict:
    """Train `steps` steps (AdamW, weight decay 0.1, warm-up + cosine) and evaluate on `heldout`;
    returns the run's record."""
    gen = np.random.default_rng(recipe.seed)
    opt = adamw(model, recipe.lr, weight_decay=0.1)
    curve, wall = run_steps(
        model, opt, steps, recipe.lr, recipe.warmup,
        lambda step: next_token_loss(model, *batches(stream, recipe.seq_len, recipe.batch_size,
                                                     gen)), name, log)
    heldout_loss = evaluate(model, heldout, recipe.seq_len, recipe.eval_windows)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        "tokens_seen": steps * recipe.batch_size * recipe.seq_len,
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
