"""JSON-schema validity with and without a grammar guide, and what guiding costs a speculative method.

For 3 JSON schemas x `--prompts` prompts (code contexts where a JSON object may follow), greedy on
the demo model: plain decoding without a guide, then with `GrammarGuide(kind="json_schema")`.
Each output is parsed (`json.loads` of the whole output; for the unguided runs also leniently:
the first JSON value at the start, `raw_decode`) and checked with `jsonschema.validate`.

Then guided vanilla against guided token-recycling on the same prompts, interleaved (the order
alternates per prompt), after untimed warm-ups: their ids must be identical; prints the time
ratio and the guide's share of each method's time (`stats.guide["guide_s"]`, the guide's time
inside the engine's timers) and the grammar's own mask cost.

    OMP_NUM_THREADS=1 python benchmarks/guided_json.py --out benchmarks/results/guided_json

Writes results.json (every output, parse and validation results, timings) into --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jsonschema
import torch

import tokenforge
from tokenforge.decoding.api import make_drafter
from tokenforge.decoding.registry import get_method
from tokenforge.guides.grammar import GrammarGuide

SCHEMAS = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "roles": {"type": "array", "items": {"enum": ["admin", "user", "guest"]},
                      "maxItems": 3},
        },
        "required": ["name", "age", "roles"],
        "additionalProperties": False,
    },
    "tool_call": {
        "type": "object",
        "properties": {
            "function": {"enum": ["open_file", "search", "run_tests"]},
            "arguments": {
                "type": "object",
                "properties": {"path": {"type": "string", "maxLength": 40},
                               "line": {"type": "integer", "minimum": 1}},
                "required": ["path", "line"],
                "additionalProperties": False,
            },
        },
        "required": ["function", "arguments"],
        "additionalProperties": False,
    },
    "server_config": {
        "type": "object",
        "properties": {
            "host": {"type": "string", "maxLength": 32},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "debug": {"type": "boolean"},
            "timeout": {"type": "number"},
            "paths": {"type": "array", "items": {"type": "string", "maxLength": 24},
                      "maxItems": 4},
        },
        "required": ["host", "port", "debug", "timeout", "paths"],
        "additionalProperties": False,
    },
}
TEMPLATES = [
    "{name} = ",
    "# the {name} as JSON\ndata = ",
    "def default_{name}():\n    return ",
    "import json\n\n{name} = json.loads('",
    "    {name} = ",
    "response = {{}}\nresponse['{name}'] = ",
    "# example {name}\n",
    "class Example:\n    {name} = ",
    "with open('{name}.json', 'w') as f:\n    json.dump(",
    "EXPECTED_{upper} = ",
    "assert parse({name}) == ",
    "    def test_{name}(self):\n        expected = ",
    "#: {name} sent by the client\nPAYLOAD = ",
    "\"\"\"Build the {name}.\"\"\"\n\nresult = ",
    "if __name__ == '__main__':\n    print(",
    "log.info('%s', ",
    "cache['{name}'] = ",
    "yield ",
    "kwargs = dict(",
    "        self.{name} = ",
]
WARMUP_PROMPTS = ["settings = ", "obj = ", "value = "]


def prompts_for(name: str, count: int) -> list[str]:
    return [t.format(name=name, upper=name.upper()) for t in TEMPLATES[:count]]


def check(text: str, schema: dict) -> dict:
    """strict: the whole output is JSON; lenient: a JSON value starts the output; valid: the
    strict value validates against the schema; lenient_valid: the lenient one does."""
    out = {"strict": False, "valid": False, "lenient": False, "lenient_valid": False}
    try:
        value, _ = json.JSONDecoder().raw_decode(text.lstrip())
        out["lenient"] = True
        out["lenient_valid"] = is_valid(value, schema)
    except json.JSONDecodeError:
        pass
    try:
        value = json.loads(text)
        out["strict"] = True
        out["valid"] = is_valid(value, schema)
    except json.JSONDecodeError:
        pass
    return out


def is_valid(value, schema: dict) -> bool:
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return False
    return True


def validity(model, prompts: dict[str, list[str]], max_new_tokens: int, guided: bool) -> list[dict]:
    rows = []
    for name, schema in SCHEMAS.items():
        guide = GrammarGuide(model.tokenizer, "json_schema", schema) if guided else None
        for prompt in prompts[name]:
            gen = tokenforge.generate(model, prompt, max_new_tokens=max_new_tokens, guide=guide)
            rows.append({"schema": name, "prompt": prompt, "text": gen.text,
                         "new_tokens": gen.stats.new_tokens,
                         "finish_reason": gen.stats.finish_reason, **check(gen.text, schema)})
    return rows


def timed_pair(model, prompts: dict[str, list[str]], max_new_tokens: int, method: str) -> dict:
    """Guided vanilla vs guided `method`, interleaved per prompt, each with its own guide per
    schema and one drafter reused throughout; a method that calibrates itself does so afresh in
    the warm-ups (as `tokenforge bench` does), not from the user cache."""
    calibrate = {"calibrate": True} if "calibrate" in get_method(method).options else {}
    drafter = make_drafter(model, method, **calibrate)
    runs = {"vanilla": [], method: []}
    for name, schema in SCHEMAS.items():
        guides = {m: GrammarGuide(model.tokenizer, "json_schema", schema) for m in runs}
        for i, prompt in enumerate(WARMUP_PROMPTS + prompts[name]):
            order = list(runs) if i % 2 == 0 else list(runs)[::-1]
            for m in order:
                start = time.perf_counter()
                gen = tokenforge.generate(model, prompt, max_new_tokens=max_new_tokens,
                                          guide=guides[m], method=m,
                                          drafter=drafter if m == method else None)
                seconds = time.perf_counter() - start
                if i < len(WARMUP_PROMPTS):
                    continue  # untimed warm-up (token-recycling explores its tree size)
                s, g = gen.stats, gen.stats.guide
                runs[m].append({"schema": name, "prompt": prompt, "ids": gen.token_ids,
                                "seconds": seconds, "total_s": s.total_s,
                                "new_tokens": s.new_tokens, "target_forwards": s.target_forwards,
                                "verify_s": s.verify_s, "guide_s": g["guide_s"],
                                "masks": g["masks"], "grammar_masks": g["grammar_masks"],
                                "grammar_mask_s": g["grammar_mask_s"],
                                "forced_tokens": g["forced_tokens"],
                                "pruned_nodes": g["pruned_nodes"]})
    vanilla, other = runs["vanilla"], runs[method]
    identical = sum(a["ids"] == b["ids"] for a, b in zip(vanilla, other))

    def summary(rows: list[dict]) -> dict:
        total = sum(r["total_s"] for r in rows)
        tokens = sum(r["new_tokens"] for r in rows)
        masks = sum(r["grammar_masks"] for r in rows)
        return {"seconds": total, "new_tokens": tokens, "tokens_per_s": tokens / total,
                "target_forwards": sum(r["target_forwards"] for r in rows),
                "guide_s": sum(r["guide_s"] for r in rows),
                "guide_share": sum(r["guide_s"] for r in rows) / total,
                "guide_us_per_token": 1e6 * sum(r["guide_s"] for r in rows) / tokens,
                "grammar_masks": masks,
                "grammar_mask_us": 1e6 * sum(r["grammar_mask_s"] for r in rows) / max(masks, 1),
                "forced_tokens": sum(r["forced_tokens"] for r in rows),
                "pruned_nodes": sum(r["pruned_nodes"] for r in rows),
                "verify_ms_per_forward": 1e3 * sum(r["verify_s"] for r in rows)
                / max(1, sum(r["target_forwards"] for r in rows) - len(rows))}

    per_prompt = [b["total_s"] / a["total_s"] for a, b in zip(vanilla, other)]
    return {"method": method, "identical": identical, "n": len(vanilla),
            "calibration": drafter.calibration(),
            "vanilla": summary(vanilla), method: summary(other),
            "speedup": summary(vanilla)["seconds"] / summary(other)["seconds"],
            "median_time_ratio": statistics.median(per_prompt), "runs": runs}


def rate(rows: list[dict], key: str) -> str:
    return f"{sum(r[key] for r in rows)}/{len(rows)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json")
    parser.add_argument("--prompts", type=int, default=20, help="prompts per schema (max 20)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--method", default="token-recycling",
                        help="the speculative method timed against guided vanilla")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = tokenforge.load_model("demo", device="cpu")
    prompts = {name: prompts_for(name, min(args.prompts, len(TEMPLATES))) for name in SCHEMAS}
    started = time.perf_counter()
    plain = validity(model, prompts, args.max_new_tokens, guided=False)
    guided = validity(model, prompts, args.max_new_tokens, guided=True)
    pair = timed_pair(model, prompts, args.max_new_tokens, args.method)

    n = len(prompts["person"])
    print(f"demo model, greedy, {n} prompts x {len(SCHEMAS)} schemas, max_new_tokens "
          f"{args.max_new_tokens}\n")
    print("| schema | decoding | whole output is JSON | ... and valid | JSON value at the start "
          "| ... and valid | finish eos |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name in SCHEMAS:
        for label, rows in (("unguided", plain), ("guided", guided)):
            mine = [r for r in rows if r["schema"] == name]
            eos = f"{sum(r['finish_reason'] == 'eos' for r in mine)}/{len(mine)}"
            print(f"| {name} | {label} | {rate(mine, 'strict')} | {rate(mine, 'valid')} | "
                  f"{rate(mine, 'lenient')} | {rate(mine, 'lenient_valid')} | {eos} |")
    for label, rows in (("unguided", plain), ("guided", guided)):
        print(f"| all | {label} | {rate(rows, 'strict')} | {rate(rows, 'valid')} | "
              f"{rate(rows, 'lenient')} | {rate(rows, 'lenient_valid')} | "
              f"{sum(r['finish_reason'] == 'eos' for r in rows)}/{len(rows)} |")

    method, v, m = pair["method"], pair["vanilla"], pair[pair["method"]]
    print(f"\nguided vanilla vs guided {method} ({pair['n']} prompts, interleaved, after "
          f"{len(WARMUP_PROMPTS)} untimed warm-ups per schema): identical ids "
          f"{pair['identical']}/{pair['n']}; {method} calibration {pair['calibration']}")
    print("| method | seconds | tokens/s | target forwards | verify ms/forward | guide s | guide share "
          "| guide µs/token | llguidance masks | µs/mask | forced tokens | draft tokens cut |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, s in (("vanilla", v), (method, m)):
        print(f"| {label} | {s['seconds']:.2f} | {s['tokens_per_s']:.1f} | {s['target_forwards']} | "
              f"{s['verify_ms_per_forward']:.2f} | {s['guide_s']:.3f} | {s['guide_share']:.1%} | "
              f"{s['guide_us_per_token']:.0f} | {s['grammar_masks']} | {s['grammar_mask_us']:.1f} | "
              f"{s['forced_tokens']} | {s['pruned_nodes']} |")
    print(f"speedup of guided {method} over guided vanilla: {pair['speedup']:.2f}x (summed time); "
          f"median per-prompt time ratio {method}/vanilla {pair['median_time_ratio']:.2f}")
    wall = time.perf_counter() - started
    print(f"wall time {wall:.0f}s")

    args.out.mkdir(parents=True, exist_ok=True)
    results = {"model": "demo", "greedy": True, "max_new_tokens": args.max_new_tokens,
               "prompts_per_schema": n, "schemas": SCHEMAS, "unguided": plain, "guided": guided,
               "timing": pair, "wall_s": wall, "torch_threads": torch.get_num_threads(),
               "platform": platform.platform(), "tokenforge": tokenforge.__version__}
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
