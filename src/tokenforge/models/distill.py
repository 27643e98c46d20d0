"""Distil a draft model from its target: plain KD or AdaSPEC's selective KD (`distill-draft`).

Paper: Hu, Guo, Feng & Zhao, "AdaSPEC: Selective Knowledge Distillation for Efficient Speculative
Decoders", arXiv 2510.19779 (NeurIPS 2025).

Plain KD (DistillSpec-style): minimise the forward KL(p_target || q_draft) of the next-token
distributions at every position of the training text.
AdaSPEC: a small draft cannot fit everything its target knows, so it should spend its capacity on
the tokens it can learn. (1) A reference draft is distilled with plain KD (same budget). (2) The
draft is distilled again from the same starting weights, but each batch keeps only the `keep`
fraction of positions with the largest dL = KL(p || q_draft) - KL(p || q_ref): the tokens where
the draft is still far behind what a draft of its size reached; the rest (hard or already fitted)
do not contribute to the loss. The selection follows the authors' released trainer.

Data: the same stdlib training files as the demo models (train_demo.split_corpus), a seeded
subset of `files` of them, random windows of `seq_len` tokens; held-out files are never used.
Options (DistillConfig): steps=400, batch_size=8, seq_len=256, lr=3e-4 (cosine to 10%, 10 warm-up
steps), keep=0.4, files=400, seed=0; bf16 autocast on the CPU, batches, schedule, clipped AdamW
steps and saving from the shared training library (`tokenforge.models.training`).
Differences from the paper: the paper distils on task data for epochs; we fine-tune an already
trained draft for a fixed number of steps on generic code, and the reference is the plain-KD
draft of the same run (so AdaSPEC costs the KD run plus its own).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tokenforge.models.load import LoadedModel, load_model
from tokenforge.models.train_demo import TrainConfig, read_text, split_corpus
from tokenforge.models.training import (
    adamw,
    batches,
    encode_corpus,
    run_steps,
    save_model,
)


@dataclass
class DistillConfig:
    steps: int = 400
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 3e-4
    warmup: int = 10
    keep: float = 0.4  # AdaSPEC: fraction of positions kept per batch
    files: int = 400  # training files sampled from the demo corpus
    seed: int = 0


def token_kl(draft_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_target || q_draft) per position (float32), over the last dimension."""
    p_log = torch.log_softmax(target_logits.float(), dim=-1)
    q_log = torch.log_softmax(draft_logits.float(), dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def selective_loss(kl: torch.Tensor, ref_kl: torch.Tensor, keep: float) -> torch.Tensor:
    """AdaSPEC: the mean KL over the `keep` fraction of positions with the largest kl - ref_kl."""
    delta = (kl - ref_kl).flatten()
    chosen = delta >= torch.quantile(delta.detach(), 1 - keep)
    return kl.flatten()[chosen].mean()


def training_stream(tokenizer, cfg: DistillConfig) -> np.ndarray:
    train_files, _, _ = split_corpus(TrainConfig().heldout_every)
    pick = np.random.default_rng(cfg.seed).permutation(len(train_files))[: cfg.files]
    return encode_corpus(tokenizer, [read_text(train_files[i]) for i in sorted(pick)])


def distill(target: LoadedModel, draft: LoadedModel, stream: np.ndarray, cfg: DistillConfig,
            reference: torch.nn.Module | None = None, log=print) -> tuple[torch.nn.Module, dict]:
    """Plain KD of a copy of `draft` (reference None) or AdaSPEC against `reference`."""
    torch.manual_seed(cfg.seed)
    gen = np.random.default_rng(cfg.seed)  # the same batches for every method
    model = copy.deepcopy(draft.model).float().train()
    teacher = target.model.eval()
    opt = adamw(model, cfg.lr, weight_decay=0.0)

    def step_loss(step: int) -> tuple[torch.Tensor, dict]:
        x, _ = batches(stream, cfg.seq_len, cfg.batch_size, gen)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with torch.no_grad():
                target_logits = teacher(input_ids=x).logits
                ref_logits = None if reference is None else reference(input_ids=x).logits
            kl = token_kl(model(input_ids=x).logits, target_logits)
        if ref_logits is None:
            return kl.mean(), {"kl_all": kl.mean().item()}
        return (selective_loss(kl, token_kl(ref_logits, target_logits), cfg.keep),
                {"kl_all": kl.mean().item()})

    curve, wall = run_steps(model, opt, cfg.steps, cfg.lr, cfg.warmup, step_loss,
                            "adaspec" if reference is not None else "kd", log, every=10)
    model.eval()
    return model, {"loss_curve": curve, "wall_time_s": round(wall, 1)}


def run_distill(target: str, draft: str, method: str, out: Path, cfg: DistillConfig,
                reference: str | None = None, log=print) -> dict:
    """Load the models, distil, save `out` (float16 safetensors + tokenizer + distill.json)."""
    teacher = load_model(target, device="cpu", dtype="float32")
    student = load_model(draft, device="cpu", dtype="float32")
    stream = training_stream(teacher.tokenizer, cfg)
    log(f"{method}: {len(stream):,} training tokens from {cfg.files} files")
    ref_model = None
    if method == "adaspec":
        if reference is None:
            log("adaspec: no --reference given, distilling the reference with plain KD first")
            ref_model, _ = distill(teacher, student, stream, cfg, log=log)
        else:
            ref_model = load_model(reference, device="cpu", dtype="float32").model
    model, record = distill(teacher, student, stream, cfg, reference=ref_model, log=log)
    out.mkdir(parents=True, exist_ok=True)
    record.update(method=method, target=target, draft=draft, reference=reference,
                  config=asdict(cfg), train_tokens=int(len(stream)),
                  file_bytes=save_model(model, out, student.tokenizer))
    (out / "distill.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def register(app) -> None:
    import typer

    @app.command("distill-draft")
    def distill_draft(
        out: Path = typer.Option(..., help="output folder for the distilled draft"),
        method: str = typer.Option("adaspec", help="adaspec or kd"),
        target: str = typer.Option("demo", help="the target model"),
        draft: str = typer.Option("demo-draft", help="the draft to start from"),
        reference: str = typer.Option(None, help="adaspec: a KD-distilled reference draft "
                                                 "(default: distil one first, same budget)"),
        steps: int = typer.Option(DistillConfig.steps, help="optimiser steps"),
        batch_size: int = typer.Option(DistillConfig.batch_size, help="windows per step"),
        seq_len: int = typer.Option(DistillConfig.seq_len, help="tokens per window"),
        lr: float = typer.Option(DistillConfig.lr, help="peak learning rate"),
        keep: float = typer.Option(DistillConfig.keep, help="adaspec: fraction of tokens kept"),
        files: int = typer.Option(DistillConfig.files, help="training files sampled"),
        seed: int = typer.Option(DistillConfig.seed, help="seed for data order and init"),
    ):
        """Distil a draft model from its target: plain KD or AdaSPEC (selective KD)."""
        from tokenforge.errors import InvalidOptionError

        if method not in ("adaspec", "kd"):
            raise InvalidOptionError(f"--method must be adaspec or kd, got {method!r}")
        if not 0 < keep <= 1:
            raise InvalidOptionError(f"--keep must be in (0, 1], got {keep}")
        cfg = DistillConfig(steps, batch_size, seq_len, lr, DistillConfig.warmup, keep, files,
                            seed)
        record = run_distill(target, draft, method, out, cfg, reference,
                             log=lambda msg: typer.echo(msg, err=True))
        typer.echo(f"{method}: saved {out} ({record['file_bytes'] / 1e6:.1f} MB, "
                   f"{record['wall_time_s']}s)")
