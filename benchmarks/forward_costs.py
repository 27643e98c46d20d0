"""Per-forward cost of the fast path (static backend) against the fallback (transformers).

One cached forward of q tokens after a prefix of `--prefix` tokens, for each q, on each backend
and dtype: the median of `--repeats` timings (tokenforge.decoding.costs.measure_forward_costs).
`static, unpacked` is the fast path without oneDNN's packed weights (plain `F.linear`): what the
packed copy of the weights buys on a CPU.
For q > 1 the tokens form a causal chain (a tree of the same size costs the same: the mask is
explicit either way). Both backends are measured interleaved, size by size, so that a change of
load on a shared machine hits both.

    python benchmarks/forward_costs.py --model demo --dtypes float32,bfloat16 --device cpu
    python benchmarks/forward_costs.py --model demo --device cuda --out out/costs.json
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from tokenforge.decoding.backends import new_backend
from tokenforge.decoding.backends.static import StaticBackend
from tokenforge.decoding.costs import measure_forward_costs
from tokenforge.models.load import device_name, load_model

BACKENDS = ("static", "static, unpacked", "transformers")


def measure(model, sizes: list[int], prefix: int, repeats: int, rounds: int = 3
            ) -> dict[str, dict[int, float]]:
    """Seconds by backend and q: the median over `rounds` interleaved rounds of medians."""
    backends = {"static": new_backend(model, "static"),
                "static, unpacked": StaticBackend(model, pack=False),
                "transformers": new_backend(model, "transformers")}
    prompt = torch.randint(0, model.get_input_embeddings().num_embeddings, (prefix,),
                           generator=torch.Generator().manual_seed(0)).tolist()
    samples: dict[str, dict[int, list[float]]] = {k: {q: [] for q in sizes} for k in BACKENDS}
    with torch.inference_mode():
        for backend in backends.values():
            backend.begin(prefix + max(sizes) + 128)
            backend.forward(prompt)
        for _ in range(rounds):
            for q in sizes:
                for kind, backend in backends.items():
                    curve = measure_forward_costs(backend, [q], repeats=repeats)
                    samples[kind][q].append(curve.seconds[q])
    return {kind: {q: statistics.median(v) for q, v in by_q.items()}
            for kind, by_q in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--sizes", default="1,2,4,8,16,32,64")
    parser.add_argument("--prefix", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", help="write the figures to this JSON file")
    args = parser.parse_args()
    sizes = [int(q) for q in args.sizes.split(",")]
    record = {"model": args.model, "device": args.device, "prefix": args.prefix,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "results": {}}
    for dtype in args.dtypes.split(","):
        loaded = load_model(args.model, device=args.device, dtype=dtype)
        record["device_name"] = device_name(loaded.device)
        seconds = measure(loaded.model, sizes, args.prefix, args.repeats)
        record["results"][dtype] = {kind: {str(q): s for q, s in by_q.items()}
                                    for kind, by_q in seconds.items()}
        print(f"\n{args.model}, {dtype}, {record['device_name']}, prefix {args.prefix}, "
              f"{torch.get_num_threads()} thread(s); ms per forward of q tokens")
        print("| q | " + " | ".join(BACKENDS) + " | fallback ÷ fast path |")
        print("| ---: |" + " ---: |" * (len(BACKENDS) + 1))
        for q in sizes:
            ms = " | ".join(f"{seconds[kind][q] * 1e3:.2f}" for kind in BACKENDS)
            print(f"| {q} | {ms} | {seconds['transformers'][q] / seconds['static'][q]:.2f}x |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
