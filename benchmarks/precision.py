"""Greedy identity with float32, in bfloat16: tokenforge's fast path against transformers.

For the first `--prompts` stdlib-heldout prompts, `--new-tokens` greedy tokens: the float32
reference (tokenforge vanilla, float32), then plain decoding in bfloat16 on tokenforge's fast path
(16-bit weights, float32 activations and LM head on the CPU), on the same fast path with its LM
head in bfloat16 (the policy not taken), on tokenforge's fallback and with transformers'
`generate` (both all-bfloat16). Prints how many outputs equal the reference and where each first
differs.

    python benchmarks/precision.py --prompts 10 --new-tokens 128
"""

from __future__ import annotations

import argparse

import torch

import tokenforge
from tokenforge.bench.datasets import encode, load_dataset
from tokenforge.decoding.backends.static import Linear, StaticBackend


def first_divergence(ids: list[int], reference: list[int]) -> int | None:
    if ids == reference:
        return None
    return next((i for i, (a, b) in enumerate(zip(ids, reference)) if a != b),
                min(len(ids), len(reference)))


def hf_generate(loaded, ids: list[int], new_tokens: int) -> list[int]:
    x = torch.tensor([ids])
    with torch.inference_mode():
        out = loaded.model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                                    max_new_tokens=new_tokens, pad_token_id=0, eos_token_id=0)
    return out[0, len(ids):].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    f32 = tokenforge.load_model("demo", device="cpu", dtype="float32")
    bf16 = tokenforge.load_model("demo", device="cpu", dtype="bfloat16")
    bf16_head = tokenforge.load_model("demo", device="cpu", dtype="bfloat16")
    backend = StaticBackend(bf16_head.model)
    head = bf16_head.model.lm_head
    backend.head = Linear(head.weight, head.bias, backend.head.products)
    bf16_head.backends[("static", "target")] = backend
    prompts = [encode(f32, p) for p in load_dataset("stdlib-heldout").prompts[: args.prompts]]
    reference = [tokenforge.generate(f32, p, max_new_tokens=args.new_tokens).token_ids
                 for p in prompts]
    runs = {
        "tokenforge bfloat16, fast path": lambda p: tokenforge.generate(
            bf16, p, max_new_tokens=args.new_tokens).token_ids,
        "tokenforge bfloat16, fast path, bfloat16 LM head": lambda p: tokenforge.generate(
            bf16_head, p, max_new_tokens=args.new_tokens, backend="static").token_ids,
        "tokenforge bfloat16, fallback": lambda p: tokenforge.generate(
            bf16, p, max_new_tokens=args.new_tokens, backend="transformers").token_ids,
        "transformers generate, bfloat16": lambda p: hf_generate(bf16, p, args.new_tokens),
    }
    print(f"greedy, {len(prompts)} stdlib-heldout prompts, {args.new_tokens} new tokens, "
          "against tokenforge vanilla float32")
    print("| decoder | identical to float32 | first divergence (token index) per differing prompt |")
    print("| --- | ---: | --- |")
    for name, run in runs.items():
        divergences = [first_divergence(run(p), ref) for p, ref in zip(prompts, reference)]
        differing = [d for d in divergences if d is not None]
        print(f"| {name} | {len(prompts) - len(differing)}/{len(prompts)} | "
              f"{', '.join(map(str, differing)) or '-'} |", flush=True)


if __name__ == "__main__":
    main()
