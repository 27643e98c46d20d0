"""tokenforge against llama.cpp on the bundled demo model, one CPU thread, greedy.

What it measures: tokens/s of greedy generation INCLUDING prompt processing (wall time from the
prompt's token ids to the last new token; new tokens ÷ time, summed over the prompts, each
(engine, prompt) the median of --repeats runs), on the first --prompts prompts of the bundled
`stdlib-heldout` set, --new-tokens new tokens (fewer when the model emits EOS), one thread:
- llama.cpp (llama-cpp-python) plain decoding and its prompt-lookup decoding
  (`LlamaPromptLookupDecoding`, num_pred_tokens=10), on GGUF conversions of `demo` in f32 and bf16;
- tokenforge in the same process: vanilla, pld, token-recycling and aded, in float32 and bfloat16,
  each with one drafter kept over all prompts (as `tokenforge bench` does).
Runs are interleaved (for each prompt and repeat, every engine in turn, in a rotating order) so
that load changes on a shared machine hit all of them alike; every engine first makes one untimed
generation on the prompt after the measured ones.

It also checks the conversion: llama.cpp's tokenization of a few code snippets and of the prompts
must equal the demo tokenizer's, and each row reports for how many prompts its tokens equal
tokenforge vanilla's, in float32 and in the row's own dtype.

The GGUF files are made by llama.cpp's own `convert_hf_to_gguf.py`, from the source distribution
of the installed llama-cpp-python (downloaded with pip and unpacked into --out the first time).
The converter knows BPE pre-tokenizers by a hash of their output; the demo's (byte-level BPE with
GPT-2's split) is unknown to it, so this script maps it to "gpt-2" at run time, and makes the
converter skip its SentencePiece attempt when there is no tokenizer.model, so that sentencepiece
is not needed. Nothing of the repository is edited.

Install llama-cpp-python (not a tokenforge dependency; it builds llama.cpp from source, about 5
minutes on 2 idle cores, 12 on a busy machine; GGML_NATIVE=ON uses this CPU's AVX-512):

    CMAKE_ARGS="-DGGML_NATIVE=ON" .venv/bin/pip install llama-cpp-python

(check first with --dry-run that it replaces none of the venv's packages: it only adds diskcache.)

Run (about 2 minutes with the defaults on a busy 2-core machine; writes llamacpp_compare.md and .json
and the GGUF files to --out):

    .venv/bin/python benchmarks/llamacpp_compare.py [--prompts 10] [--new-tokens 128] \\
        [--repeats 3] [--out out/llamacpp]
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import runpy  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from hashlib import sha256  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import tokenforge  # noqa: E402
from tokenforge import generate, load_model, make_drafter  # noqa: E402
from tokenforge.bench.datasets import encode, load_dataset  # noqa: E402
from tokenforge.models.load import DEMO_DIR  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEMO = DEMO_DIR / "demo"
METHODS = ("vanilla", "pld", "token-recycling", "aded")
DTYPES = {"f32": ("f32", "float32"), "bf16": ("bf16", "bfloat16")}  # ours: (GGUF, torch)
# the hash llama.cpp's converter computes for the demo tokenizer's pre-tokenizer (informative:
# any hash is mapped to "gpt-2" when tokenizer.json declares GPT-2's byte-level split)
DEMO_PRE_HASH = "ea413510bdac1de69945ee2c76ac91dc3e1f40b5e2c90f5fb24728b0c26387fd"
SNIPPETS = (
    "def square(x: int) -> int:\n    return x ** 2  # the square\n",
    "class Node:\n\tdef __init__(self):\n\t\tself.children = []\n\n\n",
    "s = 'héllo wörld → 🚀'; n = 12345 + 3.14e-10\n",
    "    if a and not b:\n        raise ValueError(f\"bad {a!r}\")  \n\n  \n",
    "import os, sys\nprint(sys.argv[1:], os.environ.get('HOME', ''))\n",
)
INSTALL = """llama_cpp (llama-cpp-python) is not installed. It is not a tokenforge dependency; install it
into this venv (it builds llama.cpp from source: 5 to 12 minutes on 2 cores):

    CMAKE_ARGS="-DGGML_NATIVE=ON" .venv/bin/pip install llama-cpp-python

then run this script again."""


@dataclass
class Engine:
    engine: str  # llama.cpp | tokenforge
    method: str
    dtype: str  # f32 | bf16
    run: object  # (ids, new_tokens) -> new token ids
    times: list[list[float]] = field(default_factory=list)  # per prompt, per repeat
    outputs: list[list[list[int]]] = field(default_factory=list)  # per prompt, per repeat

    @property
    def name(self) -> str:
        return f"{self.engine} {self.method} {self.dtype}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=10, help="the first N stdlib-heldout prompts")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="runs per (engine, prompt); median")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "llamacpp")
    args = parser.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print(INSTALL, file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    torch.set_num_threads(1)

    vendor = converter_dir(args.out, llama_cpp.__version__)
    ggufs = {}
    for dtype, (outtype, _) in DTYPES.items():
        ggufs[dtype] = args.out / f"demo-{dtype}.gguf"
        convert(vendor, outtype, ggufs[dtype])

    models = {dtype: load_model("demo", device="cpu", dtype=torch_dtype)
              for dtype, (_, torch_dtype) in DTYPES.items()}
    tokenizer = models["f32"].tokenizer
    dataset = load_dataset("stdlib-heldout")
    if len(dataset.prompts) < args.prompts + 1:
        raise SystemExit(f"stdlib-heldout has {len(dataset.prompts)} prompts: --prompts must be "
                         f"below that (one more is the warm-up prompt)")
    prompts = list(dataset.prompts[: args.prompts + 1])
    ids = [encode(models["f32"], p) for p in prompts]
    warmup_ids, ids = ids[-1], ids[:-1]
    context = models["f32"].context_length or 1024
    if max(map(len, ids + [warmup_ids])) + args.new_tokens + 16 > context:
        raise SystemExit(f"a prompt plus {args.new_tokens} new tokens does not fit the demo's "
                         f"context of {context} tokens")

    llamas = {(dtype, method): open_llama(llama_cpp, ggufs[dtype], context, method)
              for dtype in DTYPES for method in ("plain", "prompt-lookup")}
    eos = llamas["f32", "plain"].token_eos()
    tokenization = check_tokenization(llamas["f32", "plain"], tokenizer,
                                      list(SNIPPETS) + [p.text for p in prompts])
    print(f"tokenization: {tokenization['identical']}/{tokenization['texts']} texts tokenize "
          f"identically in llama.cpp (GGUF) and the demo tokenizer", flush=True)
    for miss in tokenization["mismatches"]:
        print(f"  MISMATCH {miss['text'][:60]!r}: llama.cpp {miss['llama_cpp'][:12]} vs demo "
              f"{miss['demo'][:12]}", flush=True)

    engines = []
    for dtype in DTYPES:
        for method in ("plain", "prompt-lookup"):
            engines.append(Engine("llama.cpp", method, dtype, llama_runner(llamas[dtype, method], eos)))
    for dtype in DTYPES:
        for method in METHODS:
            engines.append(Engine("tokenforge", method, dtype, tokenforge_runner(models[dtype], method)))

    for engine in engines:  # one untimed warm-up generation each
        engine.run(warmup_ids, args.new_tokens)
    started = time.perf_counter()
    for p, prompt_ids in enumerate(ids):
        for engine in engines:
            engine.times.append([])
            engine.outputs.append([])
        for r in range(args.repeats):
            shift = (p * args.repeats + r) % len(engines)
            for engine in engines[shift:] + engines[:shift]:
                start = time.perf_counter()
                tokens = engine.run(prompt_ids, args.new_tokens)
                engine.times[p].append(time.perf_counter() - start)
                engine.outputs[p].append(tokens)
        print(f"prompt {p + 1}/{len(ids)} ({len(prompt_ids)} tokens) done, "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    load_after = os.getloadavg()

    rows = summarize(engines)
    report = {
        "what": "greedy tokens/s incl. prompt processing, 1 thread, demo model",
        "dataset": "stdlib-heldout", "prompt_ids": [p.id for p in prompts[:-1]],
        "warmup_prompt": prompts[-1].id, "prompt_tokens": [len(x) for x in ids],
        "new_tokens": args.new_tokens, "repeats": args.repeats,
        "machine": {"platform": platform.platform(), "cpu": cpu_name(), "cores": os.cpu_count(),
                    "loadavg_before": load_before, "loadavg_after": load_after,
                    "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "llama_cpp_python": llama_cpp.__version__, "tokenforge": tokenforge.__version__},
        "conversion": {"converter": str(vendor / "convert_hf_to_gguf.py"),
                       "gguf": {d: str(g) for d, g in ggufs.items()},
                       "pre_tokenizer_hash": DEMO_PRE_HASH, "mapped_to": "gpt-2",
                       "tokenization": tokenization},
        "rows": rows,
        "key_ratios": key_ratios(rows),
        "elapsed_s": time.perf_counter() - started,
    }
    table = markdown(report)
    print("\n" + table)
    (args.out / "llamacpp_compare.md").write_text(table)
    (args.out / "llamacpp_compare.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out / 'llamacpp_compare.md'} and {args.out / 'llamacpp_compare.json'}")
    return 0


# ---- llama.cpp's converter -------------------------------------------------------------------

def converter_dir(out: Path, version: str) -> Path:
    """vendor/llama.cpp of llama-cpp-python's source distribution (the installed version), with
    convert_hf_to_gguf.py, its conversion package and gguf-py; downloaded and unpacked once."""
    top = f"llama_cpp_python-{version}"
    vendor = out / top / "vendor" / "llama.cpp"
    if (vendor / "convert_hf_to_gguf.py").is_file():
        return vendor
    sdist = out / f"{top}.tar.gz"
    if not sdist.is_file():
        print(f"downloading the llama-cpp-python {version} source distribution for its converter",
              flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                        f"llama-cpp-python=={version}", "-d", str(out)], check=True)
    prefix = f"{top}/vendor/llama.cpp/"
    wanted = ("convert_hf_to_gguf.py", "conversion", "gguf-py")
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith(prefix) and m.name[len(prefix):].split("/")[0] in wanted]
        tar.extractall(out, members=members, filter="data")
    return vendor


def convert(vendor: Path, outtype: str, outfile: Path) -> None:
    """Run llama.cpp's convert_hf_to_gguf.py on the demo model, in this process, patched."""
    for path in (vendor / "gguf-py", vendor):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    import conversion.base  # llama.cpp's converter package

    patch_converter(conversion.base.TextModel)
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", str(DEMO), "--outtype", outtype, "--outfile", str(outfile)]
    try:
        runpy.run_path(str(vendor / "convert_hf_to_gguf.py"), run_name="__main__")
    except SystemExit as err:
        if err.code:
            raise RuntimeError(f"convert_hf_to_gguf.py failed for {outtype}: exit {err.code}") from None
    finally:
        sys.argv = argv
    print(f"converted demo to {outfile} ({outfile.stat().st_size / 2**20:.1f} MiB)", flush=True)


def patch_converter(text_model) -> None:
    """Two run-time changes to the converter's TextModel, made once:
    - get_vocab_base_pre: a pre-tokenizer hash it does not know is mapped to "gpt-2" when the
      model's tokenizer.json declares GPT-2's split (ByteLevel, use_regex, no prefix space), as
      the demo's does; any other unknown hash still fails as before;
    - _create_vocab_sentencepiece: fails with FileNotFoundError (the converter's "not a
      SentencePiece model") before importing sentencepiece when there is no tokenizer.model."""
    if getattr(text_model, "_tokenforge_patched", False):
        return
    original_pre = text_model.get_vocab_base_pre
    original_spm = text_model._create_vocab_sentencepiece
    converter_log = logging.getLogger("hf-to-gguf")

    def get_vocab_base_pre(self, tokenizer) -> str:
        seen = []
        encode_fn = tokenizer.encode

        def recording_encode(*args, **kwargs):
            seen.append(encode_fn(*args, **kwargs))
            return seen[-1]

        tokenizer.encode = recording_encode
        level = converter_log.level
        converter_log.setLevel(logging.ERROR)  # its long "not recognized" banner
        try:
            return original_pre(self, tokenizer)
        except NotImplementedError:
            digest = sha256(str(seen[0]).encode()).hexdigest() if seen else "?"
            if not gpt2_byte_level(Path(self.dir_model) / "tokenizer.json"):
                raise
            note = "" if digest == DEMO_PRE_HASH else f" (not the recorded {DEMO_PRE_HASH[:12]}…)"
            print(f"pre-tokenizer hash {digest}{note}: byte-level BPE with GPT-2's split, "
                  "mapped to 'gpt-2'", flush=True)
            return "gpt-2"
        finally:
            tokenizer.encode = encode_fn
            converter_log.setLevel(level)

    def create_vocab_sentencepiece(self):
        if not (Path(self.dir_model) / "tokenizer.model").is_file():
            raise FileNotFoundError(f"no tokenizer.model in {self.dir_model}")
        return original_spm(self)

    text_model.get_vocab_base_pre = get_vocab_base_pre
    text_model._create_vocab_sentencepiece = create_vocab_sentencepiece
    text_model._tokenforge_patched = True


def gpt2_byte_level(tokenizer_json: Path) -> bool:
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    pre, model = spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    return (model.get("type") == "BPE" and spec.get("normalizer") is None
            and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
            and not pre.get("add_prefix_space", False))


# ---- the engines -----------------------------------------------------------------------------

def open_llama(llama_cpp, path: Path, context: int, method: str):
    if method == "plain":
        return llama_cpp.Llama(str(path), n_ctx=context, n_threads=1, n_threads_batch=1,
                               verbose=False)
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    # logits_all: with a draft model llama-cpp-python keeps every position's logits, and its
    # buffer only holds n_batch (512) rows unless logits_all is given
    return llama_cpp.Llama(str(path), n_ctx=context, n_threads=1, n_threads_batch=1,
                           logits_all=True, draft_model=LlamaPromptLookupDecoding(num_pred_tokens=10),
                           verbose=False)


def llama_runner(llm, eos: int):
    def run(ids: list[int], new_tokens: int) -> list[int]:
        llm.reset()  # no prompt reuse from the KV cache of the previous run
        out = []
        for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
            out.append(int(token))
            if token == eos or len(out) >= new_tokens:
                break
        return out

    return run


def tokenforge_runner(model, method: str):
    drafter = make_drafter(model, method)  # once: its state carries over the prompts

    def run(ids: list[int], new_tokens: int) -> list[int]:
        return generate(model, ids, method=method, max_new_tokens=new_tokens,
                        drafter=drafter).token_ids

    return run


def check_tokenization(llm, tokenizer, texts: list[str]) -> dict:
    mismatches = []
    for text in texts:
        ours = tokenizer(text, add_special_tokens=False)["input_ids"]
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if list(theirs) != list(ours):
            mismatches.append({"text": text, "llama_cpp": list(theirs), "demo": list(ours)})
    return {"texts": len(texts), "identical": len(texts) - len(mismatches),
            "mismatches": mismatches}


# ---- the report ------------------------------------------------------------------------------

def summarize(engines: list[Engine]) -> list[dict]:
    reference = {e.dtype: e for e in engines if e.engine == "tokenforge" and e.method == "vanilla"}
    rows = []
    for e in engines:
        medians = [statistics.median(t) for t in e.times]
        firsts = [o[0] for o in e.outputs]
        tokens = sum(len(o) for o in firsts)
        rows.append({
            "engine": e.engine, "method": e.method, "dtype": e.dtype,
            "tokens_per_s": tokens / sum(medians), "new_tokens": tokens,
            "median_s": medians, "times_s": e.times,
            "same_over_repeats": sum(all(x == o[0] for x in o) for o in e.outputs),
            # (slowest - fastest) / median run of a prompt, averaged over the prompts: the noise
            "spread": statistics.mean((max(t) - min(t)) / statistics.median(t) for t in e.times),
            "identical_to_tf_vanilla_f32": identical(firsts, reference["f32"]),
            "identical_to_tf_vanilla_same_dtype": identical(firsts, reference[e.dtype]),
            "outputs": firsts,
        })
    for row in rows:
        pl = next(r for r in rows if r["engine"] == "llama.cpp" and r["method"] == "prompt-lookup"
                  and r["dtype"] == row["dtype"])
        row["ratio_to_llamacpp_prompt_lookup"] = row["tokens_per_s"] / pl["tokens_per_s"]
    return rows


def identical(outputs: list[list[int]], reference: Engine) -> int:
    return sum(a == o[0] for a, o in zip(outputs, reference.outputs))


def key_ratios(rows: list[dict]) -> dict:
    out = {}
    for dtype in DTYPES:
        ours = [r for r in rows if r["engine"] == "tokenforge" and r["dtype"] == dtype]
        best = max(ours, key=lambda r: r["tokens_per_s"])
        lc = {r["method"]: r for r in rows if r["engine"] == "llama.cpp" and r["dtype"] == dtype}
        out[dtype] = {"best_tokenforge_method": best["method"],
                      "best_tokenforge_tokens_per_s": best["tokens_per_s"],
                      "over_llamacpp_prompt_lookup": best["tokens_per_s"]
                      / lc["prompt-lookup"]["tokens_per_s"],
                      "over_llamacpp_plain": best["tokens_per_s"] / lc["plain"]["tokens_per_s"]}
    return out


def markdown(report: dict) -> str:
    n = len(report["prompt_ids"])
    lines = [
        f"Greedy, {report['new_tokens']} new tokens, 1 thread, tokens/s including prompt "
        f"processing; {n} stdlib-heldout prompts ({min(report['prompt_tokens'])}-"
        f"{max(report['prompt_tokens'])} tokens), median of {report['repeats']} interleaved runs "
        f"each; load average {fmt_load(report['machine']['loadavg_before'])} before, "
        f"{fmt_load(report['machine']['loadavg_after'])} after.",
        "",
        "| engine | method | dtype | tokens/s | ÷ llama.cpp prompt lookup (same dtype) "
        "| = tf vanilla f32 | = tf vanilla same dtype | run spread |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['engine']} | {r['method']} | {r['dtype']} | {r['tokens_per_s']:.1f} "
                     f"| {r['ratio_to_llamacpp_prompt_lookup']:.2f} "
                     f"| {r['identical_to_tf_vanilla_f32']}/{n} "
                     f"| {r['identical_to_tf_vanilla_same_dtype']}/{n} | {r['spread']:.0%} |")
    lines.append("")
    for dtype, k in report["key_ratios"].items():
        lines.append(f"- {dtype}: best tokenforge method ({k['best_tokenforge_method']}, "
                     f"{k['best_tokenforge_tokens_per_s']:.1f} tokens/s) ÷ llama.cpp prompt lookup "
                     f"= {k['over_llamacpp_prompt_lookup']:.2f}; ÷ llama.cpp plain = "
                     f"{k['over_llamacpp_plain']:.2f}")
    tok = report["conversion"]["tokenization"]
    lines.append("- = tf vanilla: prompts whose new tokens equal tokenforge vanilla's; run spread: "
                 "(slowest - fastest) / median of a prompt's runs, averaged over the prompts")
    lines.append(f"- tokenization: {tok['identical']}/{tok['texts']} texts ({len(SNIPPETS)} code "
                 "snippets, the measured and warm-up prompts) tokenize identically in the GGUF "
                 "(llama.cpp) and the demo tokenizer")
    return "\n".join(lines) + "\n"


def fmt_load(load) -> str:
    return " / ".join(f"{x:.2f}" for x in load)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
