"""Transplant table of benchmarks/TOKENIZERS.md: the demo model moved onto three tokenizers by every
method, scored by zero-shot bits per byte on held-out stdlib files (transplanted / original) and by
the continued-training steps needed to come within 1.05x of the original.

Targets: a 16k BPE on the stdlib (the demo's own corpus: large overlap), an 8k BPE on site-packages
(partial overlap), Llama-3's tokenizer (cross-family). The two BPEs are the ones
`benchmarks/tokenizer_compression.sh` writes (trained here when missing). OMP's donor is a
draft-size model trained on the stdlib with the target tokenizer, once per target.

    python benchmarks/tokenizer_transplant.py [--out build/tokenizers/transplant]

Recovery training: AdamW at a constant 5e-4 after 10 warm-up steps, batches of 4 x 256 tokens of
the stdlib training split, bits per byte checked every --eval-every steps up to --max-steps.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tokenforge.models.load import load_model
from tokenforge.models.train_demo import TrainConfig
from tokenforge.tokenization.corpora import load_corpus
from tokenforge.tokenization.lm import (
    Donor,
    Stream,
    bits_per_byte,
    continue_training,
    encode_stream,
    train_donor,
)
from tokenforge.tokenization.plan import make_plan
from tokenforge.tokenization.train import TrainOptions, train_and_save
from tokenforge.tokenization.transplant import METHODS, load_new_tokenizer, transplant

KB = 1 << 10
TARGETS = {  # name -> (tokenizer spec, corpus and options when it has to be trained)
    "bpe-16k-stdlib": ("code-bpe-16k", ("stdlib", TrainOptions("bpe", 16384))),
    "bpe-8k-site-packages": ("site-bpe-8k", ("site-packages", TrainOptions("bpe", 8192))),
    "llama3": ("llama3", None),
}


@dataclass
class Row:
    target: str
    vocab: int
    shared: int
    bytes_per_token: float
    method: str
    bpb: float
    ratio: float
    steps_to_105: int | None
    curve: list
    seconds: float


def target_tokenizer(name: str, tok_dir: Path):
    spec, recipe = TARGETS[name]
    if recipe is not None:
        path = tok_dir / spec
        if not (path / "tokenizer.json").exists():
            corpus, opts = recipe
            train_and_save(load_corpus(corpus, max_bytes=24 << 20), opts, path)
        spec = str(path)
    return load_new_tokenizer(spec)[0]


def streams(tokenizer, args) -> tuple[Stream, Stream, Stream]:
    """(training stream, held-out slice for zero-shot, smaller held-out slice for recovery)."""
    train_docs = [d.data for d in load_corpus("stdlib").documents]
    held = [d.data for d in load_corpus("stdlib:heldout", max_bytes=args.eval_kb * KB).documents]
    small = [d.data for d in load_corpus("stdlib:heldout",
                                         max_bytes=args.recovery_eval_kb * KB).documents]
    return (encode_stream(tokenizer, train_docs), encode_stream(tokenizer, held),
            encode_stream(tokenizer, small))


def cached_donor(name: str, tokenizer, train: Stream, args) -> Donor:
    """The target's donor, trained once and kept in OUT/donor-NAME.pt (it needs no base model)."""
    path = args.out / f"donor-{name}.pt"
    if path.exists():
        return Donor(**torch.load(path))
    start = time.time()
    cut = len(train.ids) // 50
    donor = train_donor(Stream(train.ids[cut:], 0, train.eos_id),
                        Stream(train.ids[:cut], 0, train.eos_id), len(tokenizer), args.donor_steps)
    donor.stats["wall_s"] = round(time.time() - start, 1)
    print(f"{name}: donor trained in {donor.stats['wall_s']}s, held-out loss "
          f"{donor.stats['heldout_loss']}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(asdict(donor), path)
    return donor


def run_target(name: str, base, args, original: dict) -> list[Row]:
    tokenizer = target_tokenizer(name, args.tok_dir)
    plan = make_plan(base.tokenizer, tokenizer)
    train, held, small = streams(tokenizer, args)
    bytes_per_token = held.n_bytes / int((held.ids != held.eos_id).sum())
    donor = cached_donor(name, tokenizer, train, args) if "omp" in args.methods else None
    recover_cfg = TrainConfig(lr=5e-4, warmup=10, seq_len=256, batch_size=4, seed=0)
    rows = []
    for method in args.methods:
        start = time.time()
        model, report = transplant(base, tokenizer, method, donor=donor, plan=plan,
                                   min_exposures=args.omp_min_exposures)
        bpb = bits_per_byte(model, held)
        steps, curve = None, []
        if args.max_steps and name in args.recover:
            target = 1.05 * original["recovery_bpb"]
            rec = continue_training(model, train, small, target, args.max_steps, args.eval_every,
                                    recover_cfg, desc=f"{name} {method}")
            steps, curve = rec.steps, rec.curve
        rows.append(Row(name, len(tokenizer), report.shared, round(bytes_per_token, 3), method,
                        round(bpb, 4), round(bpb / original["bpb"], 3), steps,
                        [(s, round(b, 4)) for s, b in curve], round(time.time() - start, 1)))
        print(json.dumps(asdict(rows[-1])), flush=True)
        del model
    return rows


def markdown(rows: list[Row], original: dict, args) -> str:
    lines = [f"Original: {args.model} ({original['vocab']:,} tokens), {original['bpb']:.4f} bits/byte "
             f"on {args.eval_kb} KiB of held-out stdlib files ({original['recovery_bpb']:.4f} on "
             f"the {args.recovery_eval_kb} KiB recovery slice).", "",
             "| target tokenizer | vocab | shared with demo | bytes/token | method | zero-shot "
             "bits/byte | ÷ original | steps to 1.05× | ÷ original after training |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        steps, after = "not run", "-"
        if r.curve:
            last_step, last_bpb = r.curve[-1]
            steps = str(r.steps_to_105) if r.steps_to_105 is not None else f"> {last_step}"
            after = f"{last_bpb / original['recovery_bpb']:.3f} at step {last_step}"
        lines.append(f"| {r.target} | {r.vocab:,} | {r.shared:,} | {r.bytes_per_token:.2f} | "
                     f"{r.method} | {r.bpb:.3f} | {r.ratio:.3f} | {steps} | {after} |")
    return "\n".join(lines) + "\n"


def plot_recovery(rows: list[Row], original: dict, path: Path) -> bool:
    """One panel per target that had recovery training: held-out bits per byte ÷ the original's
    against training steps, one line per method, the 1.05x goal dashed. False when nothing to plot."""
    from matplotlib.figure import Figure

    targets = list(dict.fromkeys(r.target for r in rows if r.curve))
    if not targets:
        return False
    fig = Figure(figsize=(5 * len(targets), 4), layout="constrained")
    axes = fig.subplots(1, len(targets), sharey=True, squeeze=False)[0]
    for ax, target in zip(axes, targets, strict=True):
        for r in (r for r in rows if r.target == target and r.curve):
            steps, bpb = zip(*r.curve, strict=True)
            ax.plot(steps, [b / original["recovery_bpb"] for b in bpb], marker=".", label=r.method)
        ax.axhline(1.05, color="grey", linestyle="--", linewidth=1)
        ax.set(title=target, xlabel="continued-training steps")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out bits/byte ÷ original")
    axes[0].legend()
    fig.savefig(path, dpi=120)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--tok-dir", type=Path, default=Path("build/tokenizers"))
    parser.add_argument("--out", type=Path, default=Path("build/tokenizers/transplant"))
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--eval-kb", type=int, default=128)
    parser.add_argument("--recovery-eval-kb", type=int, default=24)
    parser.add_argument("--donor-steps", type=int, default=1000)
    parser.add_argument("--max-steps", type=int, default=500, help="0: no recovery training")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--recover", nargs="*", default=["bpe-16k-stdlib", "bpe-8k-site-packages"],
                        choices=list(TARGETS), help="targets that get recovery training")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--omp-min-exposures", type=float, default=0.0,
                        help="omp: donor rows seen this often or less count as not learned")
    parser.add_argument("--donors-only", action="store_true",
                        help="train and cache the OMP donors, then stop (no base model needed)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.donors_only:
        for name in args.targets:
            tokenizer = target_tokenizer(name, args.tok_dir)
            cached_donor(name, tokenizer, streams(tokenizer, args)[0], args)
        return
    base = load_model(args.model, device="cpu", dtype="float32")
    docs = load_corpus("stdlib:heldout", max_bytes=args.eval_kb * KB).documents
    small = load_corpus("stdlib:heldout", max_bytes=args.recovery_eval_kb * KB).documents
    original = {"vocab": len(base.tokenizer), "bpb": bits_per_byte(base.model, encode_stream(base.tokenizer,
                                                               [d.data for d in docs])),
                "recovery_bpb": bits_per_byte(base.model, encode_stream(
                    base.tokenizer, [d.data for d in small]))}
    print(f"original: {original}", flush=True)
    rows = [row for name in args.targets for row in run_target(name, base, args, original)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transplant.json").write_text(json.dumps(
        {"original": original, "args": {k: str(v) for k, v in vars(args).items()},
         "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    table = markdown(rows, original, args)
    (args.out / "transplant.md").write_text(table)
    print(table)
    if plot_recovery(rows, original, args.out / "transplant.png"):
        print(f"wrote {args.out / 'transplant.png'}")


if __name__ == "__main__":
    main()
