"""Plain-decoding tokens/s of random-weight Llama shapes, next to the memory-bandwidth floor.

Batch-1 decoding reads every weight once per token, so it cannot beat
    floor (s/token) = bytes of weights read per step / memory bandwidth.
The bandwidth is measured here as a device-to-device copy (bytes read + bytes written per second,
which is the rate at which memory streams). Bytes read per step are all parameters except the
input embedding table, of which one row is read (the shapes are untied, like Llama's); the KV
cache (a few hundred tokens here) adds about 1% on 7B and is left out.

For each shape a LlamaForCausalLM with random weights is built on the device, warmed up, then
timed decoding `--new-tokens` tokens from a 32-token prompt with tokenforge's `vanilla` loop on
the fast path (`static`: static cache, lean forward, CUDA graphs on a GPU) and on the fallback
(`transformers`: the model's own forward with a DynamicCache), and with transformers' greedy
`generate`. ratio = measured s/token / floor s/token (1.0 would be perfectly bandwidth-bound).

    python benchmarks/bandwidth_floor.py --shapes 1.1b,7b --device cuda --out floor.json
    python benchmarks/bandwidth_floor.py --shapes tiny --device cpu --dtype float32  # dry run
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import tokenforge
from tokenforge.bench.system import timed
from tokenforge.models.load import DTYPES, device_name

SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab
    "tiny": (64, 172, 2, 4, 2, 1000),  # for a CPU dry run of this script
    "1.1b": (2048, 5632, 22, 32, 4, 32000),  # TinyLlama-1.1B
    "7b": (4096, 11008, 32, 32, 32, 32000),  # Llama-2-7B
}
PROMPT_TOKENS = 32


@dataclass
class FloorResult:
    shape: str
    parameters: int
    bytes_per_step: int
    copy_bandwidth_gb_s: float
    floor_ms_per_token: float
    static_ms_per_token: float  # tokenforge vanilla, fast path
    fallback_ms_per_token: float  # tokenforge vanilla, transformers backend
    hf_ms_per_token: float  # transformers generate

    @property
    def ratio(self) -> float:
        return self.static_ms_per_token / self.floor_ms_per_token


class NoText:
    """`generate` decodes its output at the end; random weights have no text and no EOS."""

    eos_token_id = None

    def decode(self, ids, skip_special_tokens=True) -> str:
        return ""


def copy_bandwidth(device: torch.device, megabytes: int, repeats: int = 30) -> float:
    """Bytes read + written per second by a device-to-device copy of `megabytes` MB."""
    src = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    src.fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _, seconds = timed(device, lambda: [dst.copy_(src) for _ in range(repeats)])
    return 2 * src.numel() * repeats / seconds


def build(shape: str, device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    hidden, intermediate, layers, heads, kv_heads, vocab = SHAPES[shape]
    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, vocab_size=vocab,
                         max_position_embeddings=4096, tie_word_embeddings=False,
                         bos_token_id=None, eos_token_id=None, pad_token_id=None)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in `dtype`: no float32 copy first
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def bytes_per_step(model: LlamaForCausalLM) -> int:
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    return total - embed.numel() * embed.element_size() + embed[0].numel() * embed.element_size()


def ms_per_token(device: torch.device, decode, new_tokens: int) -> float:
    decode(8)  # warm-up: kernels, allocator, caches
    _, seconds = timed(device, decode, new_tokens)
    return 1000 * seconds / new_tokens


def measure(shape: str, device: torch.device, dtype: torch.dtype, new_tokens: int,
            bandwidth: float) -> FloorResult:
    model = build(shape, device, dtype)
    loaded = tokenforge.LoadedModel(model=model, tokenizer=NoText(), name=f"random-llama-{shape}")
    prompt = torch.randint(0, model.config.vocab_size, (PROMPT_TOKENS,),
                           generator=torch.Generator().manual_seed(0)).tolist()
    input_ids = torch.tensor([prompt], device=device)

    def ours(backend: str):
        def decode(n: int):
            gen = tokenforge.generate(loaded, prompt, method="vanilla", max_new_tokens=n,
                                      backend=backend)
            if len(gen.token_ids) != n:
                raise RuntimeError(f"expected {n} tokens, got {len(gen.token_ids)}")
        return decode

    def theirs(n: int):
        with torch.inference_mode():
            model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                           max_new_tokens=n, pad_token_id=0)

    step_bytes = bytes_per_step(model)
    result = FloorResult(
        shape=shape, parameters=sum(p.numel() for p in model.parameters()),
        bytes_per_step=step_bytes, copy_bandwidth_gb_s=bandwidth / 1e9,
        floor_ms_per_token=1000 * step_bytes / bandwidth,
        static_ms_per_token=ms_per_token(device, ours("static"), new_tokens),
        fallback_ms_per_token=ms_per_token(device, ours("transformers"), new_tokens),
        hf_ms_per_token=ms_per_token(device, theirs, new_tokens))
    return result  # the model is freed with this frame


def _ms(ms: float) -> str:
    return f"{ms:.2f} ms ({1000 / ms:.0f} tok/s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1.1b,7b", help=f"comma-separated: {', '.join(SHAPES)}")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--copy-mb", type=int, default=2048, help="size of the copy measured")
    parser.add_argument("--out", help="write the figures to this JSON file")
    args = parser.parse_args()
    shapes = args.shapes.split(",")
    if unknown := [s for s in shapes if s not in SHAPES]:
        parser.error(f"unknown shape(s) {', '.join(unknown)}; known: {', '.join(SHAPES)}")
    device = torch.device(args.device)
    bandwidth = copy_bandwidth(device, args.copy_mb)
    name = device_name(device)
    print(f"{name}: device-to-device copy {bandwidth / 1e9:.0f} GB/s (read + write); "
          f"{args.dtype}, {args.new_tokens} new tokens after a {PROMPT_TOKENS}-token prompt")
    print("| shape | parameters | weights read/token | floor | vanilla, fast path | "
          "fast / floor | vanilla, fallback | transformers generate |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    results = []
    for shape in shapes:
        started = time.perf_counter()
        r = measure(shape, device, DTYPES[args.dtype], args.new_tokens, bandwidth)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # give the last shape's memory back before the next
        results.append(r)
        print(f"| {shape} | {r.parameters / 1e9:.2f}B | {r.bytes_per_step / 1e9:.2f} GB | "
              f"{_ms(r.floor_ms_per_token)} | {_ms(r.static_ms_per_token)} | {r.ratio:.1f}x | "
              f"{_ms(r.fallback_ms_per_token)} | {_ms(r.hf_ms_per_token)} |", flush=True)
        print(f"  ({shape}: {time.perf_counter() - started:.0f}s)", flush=True)
    if args.out:
        record = {"device_name": name, "dtype": args.dtype, "new_tokens": args.new_tokens,
                  "prompt_tokens": PROMPT_TOKENS, "torch": torch.__version__,
                  "copy_bandwidth_gb_s": bandwidth / 1e9,
                  "shapes": [dict(asdict(r), ratio=r.ratio) for r in results]}
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
