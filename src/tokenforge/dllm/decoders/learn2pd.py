"""Learn2PD: a small learned filter decides which positions are final; End-of-Text Prediction.

Paper: "Learning to Parallel: Accelerating Diffusion Large Language Models via Learnable Parallel
Decoding", arXiv 2509.25188.

Algorithm: an oracle ("extremely greedy parallel") would commit, at every step, every masked
position whose current prediction already equals the token the reference decoder ends with. A
small MLP learns to imitate it from per-position features, trained on the model's own traces:
the reference output comes from `llada` at one token per step, and the trace follows the
oracle (all positions it would commit; when none, the reference token at the most confident
position). At inference every mask whose filter score reaches `threshold` is committed, at least
one per step. End-of-Text Prediction: once an EOS is committed, the rest of the canvas is EOS
and decoding stops, instead of spending forwards on what follows the end.

Features (per masked position of the block): confidence, margin over the runner-up, normalised
entropy, distance to the nearest committed position on its left (in blocks), position in the
block, share of the block still masked.

Options: block_length=32, threshold=0.9, filter="" (the filter bundled with demo-dllm; any
filter trained with `tokenforge train-learn2pd`), cache=dual, end_of_text=True.
Differences from the reference code (ims-kdks/Learning-to-Parallel-Decoding):
- its filter maps the block's 32 confidences to 32 scores (Linear 32-32, ReLU, Linear 32-32);
  this one scores each position from six features (so one filter serves any block length);
- its threshold is 0.96 on its filter; 0.9 here, where this filter's held-back precision is 92%
  (learn2pd.json records precision and recall at 0.5, 0.7 and 0.9);
- its End-of-Text Prediction also cuts the canvas where any masked position predicts EOS; here
  only a committed EOS ends the generation (under the dual cache only the block is predicted);
- it runs without a cache by default (Fast-dLLM's caches are its variants); dual here;
- trained here on 120 stdlib training-split prompts (minutes on a CPU), not on FLAN.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tokenforge.decoding.registry import Method, option
from tokenforge.dllm.loop import FORWARDERS, BlockView, Canvas, Rule
from tokenforge.dllm.registry import CacheOptions, Decoder, check_probability, register
from tokenforge.errors import InvalidOptionError
from tokenforge.models.load import DEMO_DIR

FEATURES = ("confidence", "margin", "entropy", "left_distance", "block_position", "masked_share")
BUNDLED_FILTER = DEMO_DIR / "demo-dllm" / "learn2pd.safetensors"


def features(logits: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """[n, len(FEATURES)] for the block's positions (`logits` [n, V], `masked` [n])."""
    n = len(masked)
    probs = torch.softmax(logits.float(), -1)
    top = probs.topk(2, dim=-1).values
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1) / math.log(probs.shape[-1])
    index = torch.arange(n)
    committed = torch.where(~masked, index, torch.full_like(index, -1))
    last_committed = torch.cummax(committed, 0).values  # -1: nothing committed on the left
    left = (index - last_committed).float() / n
    return torch.stack([top[:, 0], top[:, 0] - top[:, 1], entropy, left, index.float() / n,
                        masked.float().mean().expand(n)], dim=1)


class Filter(torch.nn.Module):
    def __init__(self, hidden: int = 32):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(len(FEATURES), hidden), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 0]


def load_filter(path: str | Path) -> Filter:
    from safetensors.torch import load_file

    path = Path(path) if path else BUNDLED_FILTER
    if not path.exists():
        raise InvalidOptionError(f"learn2pd: no filter at {path}; train one with `tokenforge "
                                 "train-learn2pd --model MODEL --out DIR`")
    state = load_file(path)
    model = Filter(state["net.0.weight"].shape[0])
    model.load_state_dict(state)
    return model.eval()


@dataclass(frozen=True)
class Learn2PDOptions(CacheOptions):
    threshold: float = option(0.9, "commit every mask whose filter score is at least this")
    filter: str = option("", "the filter's .safetensors (empty: the one bundled with demo-dllm)")
    end_of_text: bool = option(True, "stop once an EOS is committed (End-of-Text Prediction)")

    def __post_init__(self):
        super().__post_init__()
        check_probability("learn2pd", threshold=self.threshold)


class FilterRule(Rule):
    def __init__(self, opts: Learn2PDOptions):
        self.opts = opts
        self.filter = load_filter(opts.filter)
        self.eos: int | None = None

    def begin(self, dlm, canvas, block_length):
        self.eos = dlm.eos_id

    def select(self, view: BlockView):
        tokens, _ = view.proposals()
        with torch.no_grad():
            score = torch.sigmoid(self.filter(features(view.logits, view.masked)))
        return tokens, score >= self.opts.threshold

    def finished(self, canvas: Canvas) -> bool:
        return self.opts.end_of_text and bool((canvas.ids[canvas.prompt_len:] == self.eos).any())


def build(dlm, opts: Learn2PDOptions) -> Decoder:
    return Decoder(FilterRule(opts), FORWARDERS[opts.cache], opts.block_length)


register(Method("learn2pd", "Learn2PD, Learning to Parallel, arXiv 2509.25188",
                "a learned filter commits the positions it judges final; stops at end of text",
                build=build, options_type=Learn2PDOptions))


# --- training the filter --------------------------------------------------------------------

class OracleRule(Rule):
    """The oracle Learn2PD imitates: commit every mask whose prediction already is the reference's
    final token (when none is, the loop commits the most confident mask, with the reference's
    token), recording each step's features and labels."""

    def __init__(self, reference: list[int]):
        self.reference = torch.tensor(reference)
        self.xs: list[torch.Tensor] = []
        self.ys: list[torch.Tensor] = []

    def begin(self, dlm, canvas, block_length):
        self.offset = canvas.prompt_len

    def select(self, view: BlockView):
        first = view.start - self.offset
        target = self.reference[first:first + len(view.masked)]
        right = (view.logits.argmax(-1) == target) & view.masked
        self.xs.append(features(view.logits, view.masked)[view.masked])
        self.ys.append(right[view.masked].float())
        return target, right


def oracle_trace(dlm, prompt_ids: list[int], gen_length: int, block_length: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels (prediction == the reference's final token) of every masked position
    at every step of the oracle's decoding of one prompt; the reference is `llada` at one token
    per step."""
    from tokenforge.dllm import loop
    from tokenforge.dllm.decoders.llada import TopKRule

    reference = loop.run(dlm, prompt_ids, gen_length, block_length, TopKRule(1, False),
                         loop.FullForward, loop.Sampler(), "llada").canvas
    oracle = OracleRule(reference)
    loop.run(dlm, prompt_ids, gen_length, block_length, oracle, loop.FullForward, loop.Sampler(),
             "oracle")
    return torch.cat(oracle.xs), torch.cat(oracle.ys)


def training_prompts(tokenizer, count: int, budget: int) -> list[list[int]]:
    """Prefixes of stdlib files of the training split (never the held-out files the benchmark
    uses), cut like the stdlib-heldout prompts, at most `budget` tokens each."""
    from tokenforge.bench.datasets import MIN_PREFIX_CHARS, file_prefix
    from tokenforge.models.train_demo import TrainConfig, read_text, split_corpus

    train, _, _ = split_corpus(TrainConfig().heldout_every)
    step = max(1, len(train) // (2 * count))
    prompts = []
    for path in train[::step]:
        prefix = file_prefix(read_text(path))
        if len(prefix) >= MIN_PREFIX_CHARS:
            prompts.append(tokenizer(prefix, add_special_tokens=False)["input_ids"][-budget:])
        if len(prompts) == count:
            break
    return prompts


def train_filter(model: str, out: Path, prompts: int = 120, gen_length: int = 64,
                 block_length: int = 32, epochs: int = 60, seed: int = 0, log=print) -> dict:
    """Collect oracle traces of `model` on training-split prompts and fit the filter; writes
    `learn2pd.safetensors` and `learn2pd.json` (the record) into `out`."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    from tokenforge.dllm.api import diffusion_model

    torch.manual_seed(seed)
    dlm = diffusion_model(model)
    began = time.time()
    xs, ys = [], []
    for ids in tqdm(training_prompts(dlm.tokenizer, prompts, dlm.train_len - gen_length),
                    desc="learn2pd traces"):
        x, y = oracle_trace(dlm, ids, gen_length, block_length)
        xs.append(x)
        ys.append(y)
    x, y = torch.cat(xs), torch.cat(ys)
    trace_s = time.time() - began
    order = torch.randperm(len(x))
    split = int(0.9 * len(x))
    train_idx, val_idx = order[:split], order[split:]
    net = Filter()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(epochs):
        for batch in torch.split(train_idx[torch.randperm(len(train_idx))], 512):
            loss = F.binary_cross_entropy_with_logits(net(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        score = torch.sigmoid(net(x[val_idx]))
    truth = y[val_idx].bool()
    at = {}
    for threshold in (0.5, 0.7, 0.9):
        chosen = score >= threshold
        at[str(threshold)] = {
            "precision": round(float(truth[chosen].float().mean()) if chosen.any() else 0.0, 4),
            "recall": round(float(chosen[truth].float().mean()) if truth.any() else 0.0, 4)}
    record = {"model": model, "prompts": len(xs), "gen_length": gen_length,
              "block_length": block_length, "examples": len(x),
              "positive_share": round(float(y.mean()), 4), "epochs": epochs, "seed": seed,
              "features": list(FEATURES), "validation": at, "trace_s": round(trace_s, 1),
              "wall_time_s": round(time.time() - began, 1)}
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              out / "learn2pd.safetensors")
    (out / "learn2pd.json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"learn2pd filter: {len(x)} examples from {len(xs)} prompts, validation {at}")
    return record
