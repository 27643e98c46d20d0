"""Acceptance of the gumbel sampler against the rejection sampler, for every method.

Both samplers are exactly lossless (tests/test_sampling.py); they differ in how often drafts are
accepted. For deterministic drafters (pld, token-recycling, aded) the two accept with the same
probability in theory; for draft models, gumbel couples the draft's choice to the target's
through shared noise, while rejection sampling accepts x with min(1, p(x)/q(x)). This prints the
mean accepted tokens per target forward (new tokens / target forwards, prefill included) of
every registered method under each sampler, on the bundled demo pair, for the first `--prompts`
stdlib-heldout prompts and `--seeds` seeds each, at each temperature, with the same seeds for
both samplers. Note that with the gumbel sampler every method samples the same text for a seed
(vanilla's), so its column compares methods on one set of texts, while each rejection-sampled
method sees its own: differences within a few percent are the spread of sampled texts.

    python benchmarks/sampler_acceptance.py --temperatures 0.8,1.0 --prompts 10 --seeds 3
"""

from __future__ import annotations

import argparse
import json

import torch

import tokenforge
from tokenforge.bench.datasets import encode, load_dataset
from tokenforge.decoding.registry import all_methods
from tokenforge.decoding.sampling import SAMPLERS


def acceptance(target, draft, method, prompts: list[list[int]], temperature: float,
               sampler: str, new_tokens: int, seeds: int) -> float:
    drafter = tokenforge.make_drafter(target, method.name, draft if method.needs_draft else None)
    tokens = forwards = 0
    for i, ids in enumerate(prompts):
        for seed in range(i * seeds, (i + 1) * seeds):
            out = tokenforge.generate(target, ids, drafter=drafter, max_new_tokens=new_tokens,
                                      temperature=temperature, seed=seed, sampler=sampler)
            tokens += out.stats.new_tokens
            forwards += out.stats.target_forwards
    return tokens / forwards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--temperatures", default="0.8,1.0")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3, help="samples per prompt")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--out", help="write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    target = tokenforge.load_model("demo", device="cpu")
    draft = tokenforge.load_model("demo-draft", device="cpu")
    prompts = [encode(target, p) for p in load_dataset("stdlib-heldout").prompts[: args.prompts]]
    methods = [m for m in all_methods() if m.build is not None]
    temperatures = [float(t) for t in args.temperatures.split(",")]
    table: dict[str, dict[str, float]] = {}
    print("mean accepted tokens per target forward, demo pair, "
          f"{len(prompts)} stdlib-heldout prompts x {args.seeds} seeds, {args.new_tokens} new tokens")
    header = [f"{s} T={t}" for t in temperatures for s in SAMPLERS]
    print("| method | " + " | ".join(header) + " |")
    print("| --- |" + " ---: |" * len(header))
    for method in methods:
        row = {f"{s} T={t}": acceptance(target, draft, method, prompts, t, s, args.new_tokens,
                                        args.seeds)
               for t in temperatures for s in SAMPLERS}
        table[method.name] = row
        print(f"| {method.name} | " + " | ".join(f"{row[h]:.2f}" for h in header) + " |",
              flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"prompts": len(prompts), "seeds": args.seeds, "new_tokens": args.new_tokens,
                       "table": table}, f, indent=2)


if __name__ == "__main__":
    main()
