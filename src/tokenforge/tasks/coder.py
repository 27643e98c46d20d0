"""`demo-coder`: the demo model fine-tuned on the lab's training tasks (`tokenforge train-coder`).

Data: `lab-train` tasks (the generator's training families, seed 0), each the task's prompt
followed by its reference body and EOS; the loss is next-token cross-entropy on the body and
EOS only (the prompt is context). No held-out family is ever seen. Training uses the shared
training library's optimiser, schedule and bf16 autocast; the result is saved as float16
safetensors beside `demo` with a `training.json` record. The figures in the model card come
from `tokenforge eval-code` runs (benchmarks/BENCHMARKS.md, "Code tasks").
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tokenforge.models.load import DEMO_DIR, load_model
from tokenforge.models.training import adamw, run_steps, save_model
from tokenforge.tasks.taskset import Task, lab_train

IGNORE = -100
CODER_DIR = DEMO_DIR / "demo-coder"
# AdaDec's threshold is fitted on new instances of the training families (seed 1: not the
# instances the coder was trained on, whose references it has memorised).
FIT_TASKS = (1, 300)


@dataclass
class CoderConfig:
    base: str = "demo"
    tasks: int = 4000
    task_seed: int = 0
    epochs: int = 2
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 30
    seed: int = 0
    threads: int = 2


def encode_task(tokenizer, task: Task) -> tuple[list[int], list[int]]:
    """Input ids of prompt + body + EOS, and labels that score the body and EOS only."""
    prompt = tokenizer(task.prompt, add_special_tokens=False)["input_ids"]
    body = tokenizer(task.reference, add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id]
    return prompt + body, [IGNORE] * len(prompt) + body


def collate(rows: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, ...]:
    """Right-padded inputs, next-token labels and attention mask."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad)
    labels = torch.full((len(rows), width), IGNORE)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return ids, labels[:, 1:], mask


def completion_loss(model, ids: torch.Tensor, labels: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                                             ignore_index=IGNORE)


def train_coder(out: Path = CODER_DIR, cfg: CoderConfig | None = None,
                log=print) -> dict:
    cfg = cfg or CoderConfig()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    loaded = load_model(cfg.base, device="cpu", dtype="float32")
    model, tokenizer = loaded.model, loaded.tokenizer
    t0 = time.time()
    tasks = lab_train(cfg.task_seed, cfg.tasks)
    rows = [encode_task(tokenizer, task) for task in tasks]
    log(f"{len(rows)} training tasks from {len({t.family for t in tasks})} families "
        f"({time.time() - t0:.0f}s)")
    gen = np.random.default_rng(cfg.seed)
    per_epoch = len(rows) // cfg.batch_size
    steps = per_epoch * cfg.epochs
    order = gen.permutation(len(rows))

    def step_loss(step: int) -> torch.Tensor:
        nonlocal order
        if step and step % per_epoch == 0:
            order = gen.permutation(len(rows))
        at = (step % per_epoch) * cfg.batch_size
        batch = collate([rows[i] for i in order[at : at + cfg.batch_size]],
                        tokenizer.eos_token_id)
        return completion_loss(model, *batch)

    opt = adamw(model, cfg.lr, weight_decay=0.1)
    curve, _ = run_steps(model, opt, steps, cfg.lr, cfg.warmup, step_loss, "demo-coder",
                         every=25)
    model.eval()
    record = {
        "base": cfg.base,
        "config": asdict(cfg),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "families": len({t.family for t in tasks}),
        "steps": steps,
        "loss_curve": curve,
        "wall_time_s": round(time.time() - t0, 1),
    }
    record["file_bytes"] = save_model(model, out, tokenizer)
    record.update(measure(out, log))
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(record))
    return record


def measure(folder: Path, log) -> dict:
    """What the saved model does (loaded as a user loads it): AdaDec's fitted threshold (saved
    as `adadec.json`) and greedy pass@1 on lab-heldout and HumanEval, scored in the sandbox."""
    from tokenforge.decoding.strategies.adadec import fit_threshold
    from tokenforge.tasks.evaluate import EvalConfig, evaluate
    from tokenforge.tasks.sandbox import Sandbox
    from tokenforge.tasks.taskset import load_tasks

    loaded = load_model(str(folder), device="cpu")
    fit = fit_threshold(loaded, [(t.prompt, t.reference) for t in lab_train(*FIT_TASKS)],
                        progress=True)
    fit.save(folder / "adadec.json")
    figures = {"adadec_threshold": round(fit.threshold, 4), "greedy_pass@1": {}}
    for name in ("lab-heldout", "humaneval"):
        tasks, _ = load_tasks(name)
        result = evaluate(loaded, tasks, EvalConfig(), Sandbox(), log=log)
        figures["greedy_pass@1"][name] = result["summary"]["greedy"]["pass@1"]
        log(f"{name}: greedy pass@1 {figures['greedy_pass@1'][name]['rate']:.3f}")
    return figures


def model_card(record: dict) -> str:
    cfg = record["config"]
    rows = "\n".join(
        f"| {name} | {100 * r['rate']:.1f}% | [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}] |"
        for name, r in record["greedy_pass@1"].items())
    return f"""# demo-coder

**A lab model for decoding research, not a coding assistant.** `demo` (8.9M parameters, trained
on the Python standard library) fine-tuned on the code-task lab's generated training tasks:
one-line Python functions composed from list, string, integer and dict primitives.

| task set | greedy pass@1 | 95% bootstrap interval |
|---|---|---|
{rows}

- Training: {cfg['tasks']} `lab-train` tasks (seed {cfg['task_seed']}, {record['families']}
  training families; no held-out family is seen), prompt followed by the reference body and
  EOS, loss on the body and EOS only; {cfg['epochs']} epochs, batch {cfg['batch_size']}, AdamW lr
  {cfg['lr']} with {cfg['warmup']} warm-up steps and cosine decay, bfloat16 autocast,
  {record['steps']} steps in {record['wall_time_s'] / 60:.0f} min on a 2-core CPU
  ({cfg['threads']} threads, torch {record['torch']}, Python {record['python']}). Weights:
  float16 safetensors, {record['file_bytes'] / 1e6:.1f} MB.
- AdaDec's entropy threshold, fitted on 300 new instances of the training families
  (`adadec.json`): {record['adadec_threshold']:.3f} nats.
- Pass rates: greedy decoding, programs cut at the first top-level line, hidden tests run in
  the sandbox (`tokenforge eval-code --model demo-coder --tasks lab-heldout`). Every decoder's
  figures, with commands: benchmarks/BENCHMARKS.md, "Code tasks".
- Reproduce: `tokenforge train-coder` (writes these files, `training.json` with the loss curve,
  and this card).
- Licence: released with tokenforge; the base model's corpus is the CPython standard library
  (PSF License).
"""
