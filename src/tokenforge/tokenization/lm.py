"""Language-model measurements for transplantation: bits per byte, continued training until a
target, and the small donor model that OMP needs.

Bits per byte is the tokenizer-independent metric of the transplant papers (OMP, TokenAdapt report
perplexity ratios; per-token perplexity is not comparable across tokenizers, per-byte is). Each
document is preceded by the tokenizer's end-of-text token; the stream is cut into non-overlapping
windows; every content token is scored once (end-of-text targets are not, they stand for no byte).
Training uses the shared library (`tokenforge.models.training`); the donor has the demo draft's
shape (`tokenforge.models.train_demo.TrainConfig`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from tokenforge.models.train_demo import TrainConfig
from tokenforge.models.training import (
    Recipe,
    adamw,
    batches,
    build_model,
    set_lr,
    train_model,
    train_step,
)
from tokenforge.tokenization.corpora import as_text

LOGIT_BUDGET = 1 << 27  # floats of logits per forward batch


@dataclass
class Stream:
    ids: np.ndarray
    n_bytes: int
    eos_id: int


def encode_stream(tokenizer, documents: list[bytes], eos_id: int | None = None) -> Stream:
    """[EOS, doc1..., EOS, doc2..., ...] with a transformers tokenizer (no added specials)."""
    eos = tokenizer.eos_token_id if eos_id is None else eos_id
    encs = tokenizer.backend_tokenizer.encode_batch([as_text(d) for d in documents],
                                                    add_special_tokens=False)
    ids: list[int] = []
    for enc in encs:
        ids.append(eos)
        ids.extend(enc.ids)
    return Stream(np.asarray(ids, dtype=np.int64), sum(len(d) for d in documents), eos)


def _nats(model, block: torch.Tensor, eos_id: int) -> float:
    """Summed next-token loss (nats) of a batch of windows, end-of-text targets left out."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=block[:, :-1]).logits
    targets = block[:, 1:].flatten()
    nll = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets,
                                            reduction="none")
    return nll[targets != eos_id].sum().item()


@torch.no_grad()
def bits_per_byte(model, stream: Stream, seq_len: int = 512) -> float:
    was_training = model.training
    model.eval()
    vocab = model.get_output_embeddings().weight.shape[0]
    per_batch = max(1, LOGIT_BUDGET // (seq_len * vocab))
    ids = torch.from_numpy(stream.ids)
    full = (len(ids) - 1) // seq_len
    windows = [ids[i * seq_len : i * seq_len + seq_len + 1] for i in range(full)]
    nats = sum(_nats(model, torch.stack(windows[i : i + per_batch]), stream.eos_id)
               for i in range(0, full, per_batch))
    if len(ids) - full * seq_len > 1:
        nats += _nats(model, ids[full * seq_len :][None], stream.eos_id)
    model.train(was_training)
    return nats / math.log(2) / stream.n_bytes


@dataclass
class Recovery:
    target_bpb: float
    steps: int | None  # first evaluated step at or below the target; None if never reached
    curve: list[tuple[int, float]] = field(default_factory=list)


def continue_training(model, train: Stream, heldout: Stream, target_bpb: float, max_steps: int,
                      eval_every: int, cfg: Recipe, desc: str = "recover") -> Recovery:
    """Train with a constant learning rate (after a short warm-up) until held-out bits per byte
    reach `target_bpb`, evaluating every `eval_every` steps."""
    gen = np.random.default_rng(cfg.seed)
    opt = adamw(model, cfg.lr, weight_decay=0.0)
    result = Recovery(target_bpb, None, [(0, bits_per_byte(model, heldout, cfg.seq_len))])
    if result.curve[0][1] <= target_bpb:
        result.steps = 0
        return result
    model.train()
    for step in tqdm(range(1, max_steps + 1), desc=desc, leave=False):
        set_lr(opt, cfg.lr * min(1.0, step / max(cfg.warmup, 1)))
        train_step(model, opt, *batches(train.ids, cfg.seq_len, cfg.batch_size, gen))
        if step % eval_every == 0:
            bpb = bits_per_byte(model, heldout, cfg.seq_len)
            result.curve.append((step, bpb))
            if bpb <= target_bpb:
                result.steps = step
                break
    model.eval()
    return result


@dataclass
class Donor:
    embeddings: torch.Tensor  # (new vocab, donor hidden); rows of tokens never seen are zero
    exposures: torch.Tensor  # expected times each token was seen in training (inf: a given model)
    stats: dict

    def seen(self, more_than: float = 0.0) -> torch.Tensor:
        """Tokens whose donor row was learned from more than `more_than` expected occurrences."""
        return self.exposures > more_than


def train_donor(train: Stream, heldout: Stream, vocab_size: int, steps: int,
                cfg: TrainConfig | None = None) -> Donor:
    """A draft-size model trained on `train` (ids of the new tokenizer). Only the ids that occur
    are given rows (the rest could not be learned anyway), which keeps a 128k vocabulary cheap.
    A short run samples a small part of the stream, so a token's exposures are its count in the
    stream times the share of the stream the run reads."""
    cfg = cfg or TrainConfig(seq_len=128, batch_size=8, warmup=20, eval_windows=16)
    torch.manual_seed(cfg.seed)
    used = np.unique(np.concatenate([train.ids, heldout.ids]))
    compact = np.full(vocab_size, -1, dtype=np.int64)
    compact[used] = np.arange(len(used))
    model = build_model(cfg.draft, len(used), cfg.context, int(compact[train.eos_id]))
    stats = train_model(model, compact[train.ids], compact[heldout.ids], cfg, steps, "donor",
                        log=lambda msg: None)
    embeddings = torch.zeros(vocab_size, cfg.draft.hidden_size)
    embeddings[torch.from_numpy(used)] = model.get_input_embeddings().weight.detach().float()
    share = steps * cfg.batch_size * cfg.seq_len / len(train.ids)
    exposures = torch.from_numpy(np.bincount(train.ids, minlength=vocab_size) * share).float()
    return Donor(embeddings, exposures, stats)
