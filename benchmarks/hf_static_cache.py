"""transformers' own StaticCache (eager and under torch.compile) against tokenforge's backends.

The fast-core issue asked to try transformers' StaticCache with a compiled forward before writing
a lean forward. This times one cached forward of 1 token after a 256-token prefix on the demo
model (float32, one thread): transformers with StaticCache eagerly and compiled, and tokenforge's
static backend and its DynamicCache fallback, in one process, interleaved (each round times every
variant 20 times; the median over all rounds is kept) so that this machine's drifting speed hits
all of them alike.

    python benchmarks/hf_static_cache.py        # about a minute, most of it compiling
"""

from __future__ import annotations

import statistics
import time

import torch
from transformers import StaticCache

from tokenforge.decoding.backends import new_backend
from tokenforge.models.load import load_model

PREFIX = 256


def interleaved_ms(steps: dict, rounds: int = 6, runs: int = 20) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            for _ in range(runs):
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t[runs:]) * 1e3 for name, t in times.items()}


def main() -> None:
    torch.set_num_threads(1)
    model = load_model("demo", device="cpu", dtype="float32").model
    ids = torch.randint(0, model.config.vocab_size, (1, PREFIX),
                        generator=torch.Generator().manual_seed(0))
    token, position = torch.tensor([[5]]), torch.tensor([PREFIX])
    with torch.inference_mode():
        cache = StaticCache(config=model.config, max_cache_len=1024)
        model(input_ids=ids, past_key_values=cache, cache_position=torch.arange(PREFIX),
              use_cache=True)

        def step(forward):
            return lambda: forward(input_ids=token, past_key_values=cache,
                                   cache_position=position, use_cache=True)

        start = time.perf_counter()
        compiled = torch.compile(model.forward, dynamic=False)
        step(compiled)()
        print(f"torch.compile took {time.perf_counter() - start:.0f} s")
        steps = {"transformers StaticCache, eager": step(model.forward),
                 "transformers StaticCache, torch.compile": step(compiled)}
        for kind in ("static", "transformers"):
            backend = new_backend(model, kind)
            backend.begin(PREFIX + 64)
            backend.forward(ids[0].tolist())
            steps[f"tokenforge {kind} backend"] = lambda b=backend: (b.forward([5]),
                                                                     b.crop(PREFIX))
        for name, ms in interleaved_ms(steps).items():
            print(f"{name}: {ms:.2f} ms")


if __name__ == "__main__":
    main()
