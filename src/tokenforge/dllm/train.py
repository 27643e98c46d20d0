"""Build `demo-dllm`: the AR `demo` adapted into a masked-diffusion LM with the MDLM objective.

Objective (MDLM, Sahoo et al., arXiv 2406.07524, log-linear schedule alpha_t = 1 - t): draw t in
(0, 1] per window, mask each predictable token with probability t, and minimise the
cross-entropy on the masked tokens weighted by 1/t, which is the negative ELBO. Half of the
windows mask only after a random cut (a visible prefix, the shape of every generation: prompt
then masks, as in LLaDA's SFT); the other half mask anywhere.

How it differs from training from scratch: the weights start from the AR `demo` (AR-to-diffusion
adaptation, as Dream and DiffuLLaMA do at scale), with attention made bidirectional and the
output shifted (the output at i predicts i + 1, see model.py). This is what fits the issue's
60-minute CPU budget; `--init scratch` trains the same shape from random weights instead.

Corpus, tokenizer and held-out files are `demo`'s (train_demo.split_corpus). The held-out ELBO is
reported in bits per byte next to `demo`'s next-token loss on the same windows, both predicting
tokens 1..L-1 of each window, bytes counted on the decoded text of those tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tokenforge.dllm.model import DLLM_KEY, MASK_TOKEN, DiffusionLM
from tokenforge.models.load import DEMO_DIR, LoadedModel
from tokenforge.models.training import (
    Recipe,
    adamw,
    batches,
    encode_corpus,
    run_steps,
    save_model,
)

DLLM_DIR = DEMO_DIR / "demo-dllm"


@dataclass
class DiffusionRecipe(Recipe):
    """`Recipe` (lr, warm-up, batch x window, seed, evaluation windows) plus the MDLM run's own:
    steps, the share of prefix-visible windows, the t samples per held-out window, the init."""

    lr: float = 1e-3
    warmup: int = 50
    steps: int = 800
    prefix_share: float = 0.5
    elbo_samples: int = 8
    init: str = "demo"  # or "scratch"
    threads: int = 1


def load_base(init: str):
    """`demo`'s weights (or its shape freshly initialised) with a mask token added, made a
    diffusion model by its config entry."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    source = DEMO_DIR / "demo"
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = LlamaForCausalLM.from_pretrained(source, dtype=torch.float32)
    if init == "scratch":
        model = LlamaForCausalLM(model.config)
    elif init != "demo":
        raise ValueError(f"init must be 'demo' or 'scratch', got {init!r}")
    tokenizer.add_special_tokens({"additional_special_tokens": [MASK_TOKEN]})
    mask_id = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return model, tokenizer, mask_id


def mdlm_loss(dlm: DiffusionLM, x: torch.Tensor, t: torch.Tensor, maskable: torch.Tensor,
              gen: torch.Generator | None = None) -> torch.Tensor:
    """Negative ELBO per predictable token: mask each `maskable` token of window b with
    probability t[b], cross-entropy on the masked ones weighted by 1/t[b]."""
    draw = torch.rand(x.shape, generator=gen)
    masked = maskable & (draw < t[:, None])
    noisy = torch.where(masked, torch.full_like(x, dlm.mask_id), x)
    logits = dlm.full_logits(noisy)
    ce = F.cross_entropy(logits[masked], x[masked], reduction="none")
    weights = (1.0 / t)[:, None].expand_as(x)[masked]
    return (ce * weights).sum() / maskable.sum()


def training_masks(batch: int, length: int, prefix_share: float,
                   gen: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """t per window (stratified over the batch) and which positions may be masked: never
    position 0; in a prefix-visible window, only positions after a cut in [L/8, 7L/8)."""
    t = (np.arange(batch) + gen.random(batch)) / batch
    t = torch.from_numpy(np.clip(t, 1e-3, 1.0)).float()
    maskable = torch.ones(batch, length, dtype=torch.bool)
    maskable[:, 0] = False
    for b in range(batch):
        if gen.random() < prefix_share:
            maskable[b, : int(gen.integers(length // 8, 7 * length // 8))] = False
    return t, maskable


def heldout_windows(stream: np.ndarray, length: int, count: int) -> torch.Tensor:
    n = min(count, (len(stream) - 1) // length)
    starts = np.linspace(0, len(stream) - length - 1, n).astype(int)
    return torch.from_numpy(np.stack([stream[s:s + length] for s in starts]).astype(np.int64))


def window_bytes(tokenizer, windows: torch.Tensor) -> int:
    """Bytes of the decoded text of tokens 1..L-1 of every window (what both models predict)."""
    return sum(len(tokenizer.decode(w[1:].tolist()).encode("utf-8")) for w in windows)


@torch.no_grad()
def elbo_bits_per_byte(dlm: DiffusionLM, windows: torch.Tensor, samples: int,
                       seed: int = 0) -> float:
    """The MDLM negative ELBO of the windows in bits per byte: `samples` stratified t per
    window, all tokens but the first predictable."""
    dlm.model.eval()
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for window in windows:
        x = window[None].expand(samples, -1)
        t = ((torch.arange(samples) + torch.rand(samples, generator=gen)) / samples).clamp(1e-3)
        maskable = torch.ones_like(x, dtype=torch.bool)
        maskable[:, 0] = False
        total += mdlm_loss(dlm, x, t, maskable, gen).item() * (x.shape[1] - 1)
    return total / math.log(2) / window_bytes(dlm.tokenizer, windows)


@torch.no_grad()
def ar_bits_per_byte(model, tokenizer, windows: torch.Tensor) -> float:
    """An AR model's next-token loss on the same windows, in bits per byte."""
    total = 0.0
    for window in windows:
        logits = model(input_ids=window[None]).logits[0, :-1].float()
        total += F.cross_entropy(logits, window[1:], reduction="sum").item()
    return total / math.log(2) / window_bytes(tokenizer, windows)


def train_dllm(out: Path = DLLM_DIR, recipe: DiffusionRecipe | None = None, log=print) -> dict:
    from tokenforge.models.train_demo import TrainConfig, read_text, split_corpus

    recipe = recipe or DiffusionRecipe()
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    model, tokenizer, mask_id = load_base(recipe.init)
    setattr(model.config, DLLM_KEY, {"mask_token_id": mask_id, "shift": True,
                                     "train_len": recipe.seq_len})
    dlm = DiffusionLM(LoadedModel(model, tokenizer, "demo-dllm"))
    train_files, heldout_files, _ = split_corpus(TrainConfig().heldout_every)
    stream = encode_corpus(tokenizer, [read_text(p) for p in train_files])
    heldout = encode_corpus(tokenizer, [read_text(p) for p in heldout_files])
    log(f"corpus: {len(stream):,} training tokens, {len(heldout):,} held-out tokens")

    gen = np.random.default_rng(recipe.seed)
    mask_gen = torch.Generator().manual_seed(recipe.seed)

    def step_loss(step: int) -> torch.Tensor:
        x, _ = batches(stream, recipe.seq_len, recipe.batch_size, gen)
        t, maskable = training_masks(recipe.batch_size, recipe.seq_len, recipe.prefix_share, gen)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return mdlm_loss(dlm, x, t, maskable, mask_gen)

    opt = adamw(model, recipe.lr, weight_decay=0.1)
    curve, wall = run_steps(model, opt, recipe.steps, recipe.lr, recipe.warmup, step_loss,
                            "demo-dllm", log, every=25)

    windows = heldout_windows(heldout, recipe.seq_len, recipe.eval_windows)
    from transformers import LlamaForCausalLM

    demo = LlamaForCausalLM.from_pretrained(DEMO_DIR / "demo", dtype=torch.float32).eval()
    record = {
        "torch": torch.__version__,
        "recipe": asdict(recipe),
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokens_seen": recipe.steps * recipe.batch_size * recipe.seq_len,
        "loss_curve": curve,
        "wall_time_s": round(wall, 1),
        "heldout_windows": len(windows),
        "heldout_elbo_bits_per_byte": round(elbo_bits_per_byte(dlm, windows,
                                                               recipe.elbo_samples), 4),
        "demo_bits_per_byte": round(ar_bits_per_byte(demo, tokenizer, windows), 4),
        "mask_token_id": mask_id,
    }
    record["file_bytes"] = save_model(model, out, tokenizer)
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(record))
    log(f"demo-dllm: held-out ELBO {record['heldout_elbo_bits_per_byte']} bits/byte "
        f"(demo: {record['demo_bits_per_byte']}), {wall / 60:.0f} min")
    return record


def model_card(record: dict) -> str:
    r = record["recipe"]
    row = (f"| {record['parameters']:,} | {r['steps']} | {record['tokens_seen']:,} | "
           f"{record['heldout_elbo_bits_per_byte']} bits/byte | {record['demo_bits_per_byte']} "
           f"bits/byte | {record['wall_time_s'] / 60:.0f} min | {record['file_bytes'] / 1e6:.1f} MB |")
    init = ("the AR `demo`'s weights (AR-to-diffusion adaptation)" if r["init"] == "demo"
            else "random weights")
    return f"""# demo-dllm

**A demo model for mechanics and benchmarks, not a useful assistant.** A masked-diffusion
language model that writes Python in the style of the standard library by unmasking, for the
diffusion decoders of `tokenforge.dllm` (llada, fast-dllm, credit, localleap, elastic-cache,
learn2pd).

| parameters | steps | tokens seen | held-out ELBO | `demo` on the same windows | training | weights |
|---|---|---|---|---|---|---|
{row}

- Architecture: `demo`'s Llama shape (hidden 256, 6 layers, 8 heads, 4 KV heads, MLP 768) with
  **bidirectional attention** and one added token `{MASK_TOKEN}` (id {record['mask_token_id']}).
  The checkpoint is a `LlamaForCausalLM`, so `from_pretrained` loads it, and its config's
  `{DLLM_KEY}` entry marks it; run it with full attention, as `tokenforge.dllm.DiffusionLM`
  does (transformers' own forward is causal). The output at position i predicts the token at
  i + 1 (shifted, like the AR model it came from).
- Objective: MDLM's negative ELBO with the log-linear schedule (mask with probability t,
  cross-entropy on masked tokens weighted by 1/t); {r['prefix_share']:.0%} of the windows keep a
  random prefix visible. Initialised from {init}.
- Training: AdamW (lr {r['lr']}, {r['warmup']} warm-up steps, cosine to 10%, weight decay 0.1),
  batch {r['batch_size']} x {r['seq_len']} tokens, bfloat16 autocast on CPU, seed {r['seed']},
  {r['threads']} thread(s), torch {record['torch']}, on a 2-core CPU shared with other work.
  Generation should keep prompt + new tokens within {r['seq_len']} positions, the training length.
- Corpus, tokenizer and held-out files: `demo`'s (see its card). Held-out ELBO: {r['elbo_samples']}
  stratified t per window over {record['heldout_windows']} windows of {r['seq_len']} tokens, in
  bits per byte of the decoded text of tokens 1..L-1; `demo`'s next-token loss on the same tokens
  is next to it. The ELBO is an upper bound on the diffusion model's negative log-likelihood.
- Reproduce: `tokenforge train-dllm` (writes the weights, `training.json` with the loss curve,
  and this card).
- `learn2pd.safetensors` is the Learn2PD decoder's filter (a 2-layer MLP over six features per
  position), trained on this model's own traces by `tokenforge train-learn2pd`; its record,
  with precision and recall on held-back examples, is `learn2pd.json`.
- Licence: the corpus is the CPython standard library (PSF License); the weights are released
  with tokenforge.
"""
