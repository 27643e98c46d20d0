"""Why threshold decoding stays near one token per step on demo-dllm: how confident the model is
at each distance from the last committed position.

For each prompt, the reference output (llada at one token per step) is revealed up to k tokens
(k = 0, 8, 16, 24) and one forward predicts the rest; for the next six positions it records the
confidence of the predicted token and whether that token is the reference's. Writes
benchmarks/results/dllm/confidence.json and prints a markdown table.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dllm_confidence.py [--limit 10]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tokenforge.bench.datasets import load_dataset
from tokenforge.dllm.api import diffuse, diffusion_model

OUT = Path(__file__).parent / "results" / "dllm" / "confidence.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--gen-length", type=int, default=32)
    args = parser.parse_args()
    dlm = diffusion_model("demo-dllm")
    rows: dict[int, list[tuple[float, bool]]] = {d: [] for d in range(6)}
    for prompt in load_dataset("stdlib-heldout").prompts[:args.limit]:
        ids = dlm.tokenizer(prompt.text, add_special_tokens=False)["input_ids"]
        ids = ids[-(dlm.train_len - args.gen_length):]
        reference = diffuse(dlm, ids, "llada", gen_length=args.gen_length,
                            block_length=args.gen_length).canvas
        canvas = torch.tensor(ids + reference)
        for shown in range(0, args.gen_length - 6, 8):
            x = canvas.clone()
            x[len(ids) + shown:] = dlm.mask_id
            with torch.no_grad():
                logits, _ = dlm.predict(x, len(ids) + shown, len(ids) + shown + 6)
            confidence, token = torch.softmax(logits, -1).max(-1)
            for d in range(6):
                rows[d].append((confidence[d].item(),
                                token[d].item() == reference[shown + d]))
    table = []
    for d, values in rows.items():
        c = torch.tensor([v[0] for v in values])
        table.append({"distance": d + 1, "n": len(values), "mean_confidence": c.mean().item(),
                      "share_ge_0.9": (c >= 0.9).float().mean().item(),
                      "share_ge_0.7": (c >= 0.7).float().mean().item(),
                      "share_ge_0.5": (c >= 0.5).float().mean().item(),
                      "matches_reference": sum(v[1] for v in values) / len(values)})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"model": "demo-dllm", "prompts": args.limit, "rows": table},
                              indent=2) + "\n")
    print("| distance from the last committed token | mean confidence | >= 0.9 | >= 0.7 | >= 0.5 "
          "| prediction = reference |\n|---:|---:|---:|---:|---:|---:|")
    for r in table:
        print(f"| {r['distance']} | {r['mean_confidence']:.2f} | {r['share_ge_0.9']:.0%} | "
              f"{r['share_ge_0.7']:.0%} | {r['share_ge_0.5']:.0%} | {r['matches_reference']:.0%} |")


if __name__ == "__main__":
    main()
