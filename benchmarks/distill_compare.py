"""Distil demo-draft two ways with the same budget (plain KD, AdaSPEC) and compare, on held-out
stdlib files, how well each draft serves `demo` next to the original demo-draft.

    python benchmarks/distill_compare.py [--out /tmp/tokenforge-distill] [--steps 400]

Steps: `distill-draft --method kd` (also AdaSPEC's reference), then `--method adaspec
--reference <kd>`; then, for demo-draft, kd and adaspec: mean accepted tokens per target
forward with sps (gamma 4; greedy, and temperature 1 with 3 seeds per prompt) over prompts cut
from the held-out files, with paired bootstrap intervals for the differences, plus teacher-forced
KL(p || q) and top-1 agreement with the target on the held-out stream. Writes
benchmarks/distill_results.json and benchmarks/distill_results.md. Everything is seeded; on 2
idle CPU cores the whole run takes about 15 minutes (`--reuse` keeps drafts already distilled in
--out with the same settings).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from tokenforge import generate, load_model, make_drafter
from tokenforge.models.distill import DistillConfig, run_distill, token_kl
from tokenforge.models.train_demo import TrainConfig, encode_corpus, read_text, split_corpus

HERE = Path(__file__).parent


def heldout_prompts(tokenizer, n: int, length: int) -> tuple[list[list[int]], np.ndarray]:
    """Up to n prompts of `length` tokens, two per held-out file where it is long enough (the
    first `length` tokens, mostly license and docstring, are skipped)."""
    _, heldout, _ = split_corpus(TrainConfig().heldout_every)
    prompts = []
    for path in heldout:
        ids = tokenizer(read_text(path), add_special_tokens=False)["input_ids"]
        prompts += [ids[s : s + length] for s in (length, 3 * length) if len(ids) >= s + 2 * length]
    return prompts[:n], encode_corpus(tokenizer, [read_text(p) for p in heldout])


def acceptance(target, draft, prompts, temperature: float, new_tokens: int,
               seeds: int) -> np.ndarray:
    """(new tokens, target forwards) per prompt with sps (gamma 4), summed over the seeds."""
    drafter = make_drafter(target, "sps", draft, gamma=4)
    counts = np.zeros((len(prompts), 2))
    for i, prompt in enumerate(prompts):
        for seed in range(seeds):
            stats = generate(target, prompt, drafter=drafter, max_new_tokens=new_tokens,
                             temperature=temperature, seed=seed).stats
            counts[i] += (stats.new_tokens, stats.target_forwards)
    return counts


def mean_accepted(counts: np.ndarray) -> float:
    return float(counts[:, 0].sum() / counts[:, 1].sum())


def paired_interval(a: np.ndarray, b: np.ndarray, draws: int = 4000) -> tuple[float, float]:
    """95% bootstrap interval (over prompts, paired) of mean_accepted(a) - mean_accepted(b)."""
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(a), size=(draws, len(a)))
    diff = [mean_accepted(a[i]) - mean_accepted(b[i]) for i in idx]
    return float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))


@torch.no_grad()
def teacher_forced(target, draft, stream: np.ndarray, windows: int = 16, length: int = 256):
    kls, agree = [], []
    for i in range(windows):
        x = torch.from_numpy(stream[i * length : (i + 1) * length].astype(np.int64))[None]
        p, q = target.model(input_ids=x).logits, draft.model(input_ids=x).logits
        kls.append(token_kl(q, p).mean().item())
        agree.append((p.argmax(-1) == q.argmax(-1)).float().mean().item())
    return float(np.mean(kls)), float(np.mean(agree))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/tokenforge-distill"))
    parser.add_argument("--steps", type=int, default=DistillConfig.steps)
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--reuse", action="store_true",
                        help="keep a draft already distilled in --out with the same settings")
    args = parser.parse_args()
    cfg = DistillConfig(steps=args.steps)
    start = time.time()
    records = {}
    for method in ("kd", "adaspec"):
        done = args.out / method / "distill.json"
        if args.reuse and done.exists() and json.loads(done.read_text())["config"] == vars(cfg):
            records[method] = json.loads(done.read_text())
            continue
        records[method] = run_distill("demo", "demo-draft", method, args.out / method, cfg,
                                      reference=str(args.out / "kd") if method == "adaspec" else None)
    target = load_model("demo", device="cpu", dtype="float32")
    prompts, stream = heldout_prompts(target.tokenizer, args.prompts, 128)
    rows, counts = {}, {}
    for name, spec in (("demo-draft", "demo-draft"), ("kd", str(args.out / "kd")),
                       ("adaspec", str(args.out / "adaspec"))):
        draft = load_model(spec, device="cpu", dtype="float32")
        kl, agree = teacher_forced(target, draft, stream)
        counts[name] = {mode: acceptance(target, draft, prompts, temperature, args.new_tokens,
                                         seeds)
                        for mode, temperature, seeds in (("greedy", 0.0, 1), ("t1", 1.0, 3))}
        rows[name] = {
            "sps_greedy_mean_accepted": round(mean_accepted(counts[name]["greedy"]), 3),
            "sps_t1_mean_accepted": round(mean_accepted(counts[name]["t1"]), 3),
            "heldout_kl": round(kl, 4),
            "heldout_top1_agreement": round(agree, 4),
            "distill_wall_time_s": records.get(name, {}).get("wall_time_s"),
        }
        print(name, rows[name], flush=True)
    intervals = {f"adaspec - {other}": {mode: [round(x, 3) for x in paired_interval(
        counts["adaspec"][mode], counts[other][mode])] for mode in ("greedy", "t1")}
        for other in ("kd", "demo-draft")}
    result = {"config": vars(cfg), "prompts": len(prompts), "new_tokens": args.new_tokens,
              "t1_seeds_per_prompt": 3, "machine": f"{platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads", "torch": torch.__version__,
              "total_wall_time_s": round(time.time() - start, 1), "drafts": rows,
              "paired_95ci_of_difference": intervals}
    (HERE / "distill_results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| draft | sps mean accepted (greedy) | sps mean accepted (T=1) | held-out KL(p‖q) "
             "| top-1 agreement | distil time (s) |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['sps_greedy_mean_accepted']} | {r['sps_t1_mean_accepted']} "
                     f"| {r['heldout_kl']} | {r['heldout_top1_agreement']} "
                     f"| {r['distill_wall_time_s'] or '-'} |")
    lines += [""] + [f"{pair}: greedy {ci['greedy']}, T=1 {ci['t1']} (95% paired bootstrap "
                     "interval over prompts)" for pair, ci in intervals.items()]
    (HERE / "distill_results.md").write_text(
        f"Distilled drafts for `demo` ({args.steps} steps each, {len(prompts)} held-out prompts, "
        f"{args.new_tokens} new tokens, T=1 with 3 seeds per prompt, sps gamma 4; produced by "
        "benchmarks/distill_compare.py)\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
