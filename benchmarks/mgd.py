"""Monitor-guided decoding and Repilot-style completion on the demo model's held-out stdlib files.

Each of up to `--limit` member accesses `obj.name` in the held-out files (the `stdlib-heldout`
split, bench/datasets.py; accesses found with `tokenize`, spread over the files) becomes a prompt:
the file cut right after the `.`, its last `--prompt-tokens` tokens given to the model (the guides
see the whole file before the cut as `prefix`, and with `--context file`, the default, the rest of
the file after the cut line as `suffix`, and jedi is told the file's path: MGD's monitor analyses
the repository, not the model's window). The demo model completes the line (stop at a newline, at
most `--max-new-tokens`) without a guide, with MemberMonitor and with CompletionEngine; greedy, and
`--samples` samples at T=0.8 (seeds 0..n-1).

Reported per guide and mode:
- match: the first identifier generated is the original member;
- resolve: completions whose member accesses all resolve: for every `.` + identifier in the
  generated text (the cut's one first), jedi (with the same prefix/suffix) lists the identifier
  among the receiver's members; accesses whose receiver jedi cannot infer are not checked, an
  identifier still open when the token limit cut the completion is not checked, and completions
  with nothing checked are left out of the rate (`checked` says how many count);
- parse: the completed line (the original line up to the cut + the generated text up to the newline)
  put in place of the original line, after the file's lines from the start of the enclosing top-level
  statement, has no syntax error that parso places on that line (errors on later lines, such as a
  block or bracket left open, do not count); `parse` of the original lines is printed as reference;
- saved/100: target forwards saved by forced tokens per 100 generated tokens (the engine's
  `forced_tokens`: each is a token the guide allowed alone, put into the tree without its own
  forward), and the completion engine's forced member completions;
- time: wall seconds per completion, and the guide's share (jedi and masks).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mgd.py --limit 100 --out /tmp/mgd.json
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import keyword
import platform
import random
import re
import sysconfig
import time
import tokenize
from dataclasses import dataclass
from pathlib import Path

import parso
import torch

import tokenforge
from tokenforge.bench.datasets import stdlib_heldout
from tokenforge.guides.python_monitor import MemberMonitor
from tokenforge.guides.repilot import CompletionEngine

IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
MEMBER_AFTER_DOT = re.compile(r"\.([A-Za-z_]\w*)?")
GUIDES = ("none", "monitor", "repilot")
KEYWORDS = frozenset(keyword.kwlist) - {"None", "True", "False"}


@dataclass
class Cut:
    file: str  # relative to the stdlib
    text: str  # the whole file
    at: int  # character offset right after the `.`
    member: str  # the original identifier after it

    @property
    def prefix(self) -> str:
        return self.text[: self.at]

    @property
    def line_start(self) -> int:
        return self.text.rfind("\n", 0, self.at) + 1

    @property
    def suffix(self) -> str:
        """The file after the cut line (from its newline on)."""
        end = self.text.find("\n", self.at)
        return "" if end < 0 else self.text[end:]


def member_cuts(rel: str, text: str) -> list[Cut]:
    """Every `obj.name` outside comments, strings and import statements."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return []
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    cuts, statement_head = [], None
    for before, dot, name in zip(tokens, tokens[1:], tokens[2:]):
        if before.type in (tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT):
            statement_head = None
        elif statement_head is None and before.type == tokenize.NAME:
            statement_head = before.string
        if not (dot.type == tokenize.OP and dot.string == "." and name.type == tokenize.NAME):
            continue
        if statement_head in ("import", "from"):
            continue
        receiver_ok = (before.type == tokenize.NAME and before.string not in KEYWORDS) or (
            before.type == tokenize.OP and before.string in ")]") or before.type == tokenize.STRING
        if receiver_ok and before.end == dot.start and dot.end == name.start:
            at = starts[dot.end[0] - 1] + dot.end[1]
            cuts.append(Cut(rel, text, at, name.string))
    return cuts


def pick_cuts(limit: int, seed: int = 0) -> list[Cut]:
    """Up to `limit` cuts, round-robin over the held-out files, random within each file."""
    prompts, _ = stdlib_heldout()
    root = Path(sysconfig.get_paths()["stdlib"])
    per_file = []
    for prompt in prompts:
        text = (root / prompt.id).read_text(encoding="utf-8")
        found = member_cuts(prompt.id, text)
        random.Random(f"{seed}:{prompt.id}").shuffle(found)
        if found:
            per_file.append(found)
    out: list[Cut] = []
    while len(out) < limit and any(per_file):
        for found in per_file:
            if found and len(out) < limit:
                out.append(found.pop())
    return out


def stdlib_path(rel: str) -> str:
    """Where jedi is told the file lies (its relative imports resolve from there)."""
    return str(Path(sysconfig.get_paths()["stdlib"]) / rel)


def statement_start(text: str, line_no: int, tree: ast.Module | None) -> int:
    """The first line (1-based) of the top-level statement holding `line_no`."""
    if tree is None:
        return max(1, line_no - 40)
    start = 1
    for node in tree.body:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        if first <= line_no:
            start = first
        else:
            break
    return start


class LineParser:
    """Whether a line, put in place of a file's line, has a syntax error on it (parso)."""

    def __init__(self):
        self.grammar = parso.load_grammar()
        self.trees: dict[str, ast.Module | None] = {}

    def parses(self, cut: Cut, line: str) -> bool:
        if cut.file not in self.trees:
            try:
                self.trees[cut.file] = ast.parse(cut.text)
            except SyntaxError:
                self.trees[cut.file] = None
        line_no = cut.text.count("\n", 0, cut.at) + 1
        first = statement_start(cut.text, line_no, self.trees[cut.file])
        lines = cut.text.splitlines()[first - 1: line_no - 1]
        code = "".join(x + "\n" for x in lines) + line + "\n"
        row = len(lines) + 1
        module = self.grammar.parse(code)
        return not any(error.start_pos[0] == row for error in self.grammar.iter_errors(module))


class Resolver:
    """Member accesses in a completion, checked with jedi through a MemberMonitor's analysis."""

    def __init__(self, tokenizer):
        self.analysis = MemberMonitor(tokenizer, cache_size=4096)

    def check(self, cut: Cut, suffix: str, generated: str, truncated: bool) -> tuple[int, int, bool]:
        """(accesses checked, accesses resolved, first access's receiver known)."""
        self.analysis.suffix, self.analysis.path = suffix, stdlib_path(cut.file)
        checked = resolved = 0
        first_known = False
        code = cut.prefix + generated
        start = len(cut.prefix) - 1
        for found in MEMBER_AFTER_DOT.finditer(code, start):
            name = found.group(1) or ""
            if truncated and found.end() == len(code) and name:
                continue  # an identifier the token limit cut
            receiver = self.analysis.receiver(code[: found.start() + 1].encode())
            if found.start() == start:
                first_known = receiver is not None and receiver.known
            if receiver is None or not receiver.known:
                continue
            checked += 1
            resolved += name.encode() in receiver.name_set
        return checked, resolved, first_known


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    model = tokenforge.load_model("demo", device="cpu")
    tok = model.tokenizer
    cuts = pick_cuts(args.limit, args.seed)
    guides = {"none": None, "monitor": MemberMonitor(tok), "repilot": CompletionEngine(tok)}
    resolver, parser = Resolver(tok), LineParser()
    modes = [("greedy", 0.0, [None])] + ([("sample", args.temperature, list(range(args.samples)))]
                                         if args.samples else [])
    records = []
    started = time.perf_counter()
    for n, cut in enumerate(cuts):
        ids = tok(cut.prefix, add_special_tokens=False, verbose=False)["input_ids"]
        kept = ids[-args.prompt_tokens:]
        dropped = b"".join(resolver.analysis.vocab.bytes[t] for t in ids[: len(ids) - len(kept)])
        suffix = cut.suffix if args.context == "file" else ""
        line_head = cut.text[cut.line_start: cut.at]
        record = {"file": cut.file, "at": cut.at, "member": cut.member, "prompt_tokens": len(kept),
                  "original_parses": parser.parses(cut, cut.text[cut.line_start:].split("\n")[0]),
                  "runs": []}
        for name in GUIDES:
            guide = guides[name]
            if guide is not None:
                guide.prefix, guide.suffix, guide.path = dropped, suffix, stdlib_path(cut.file)
            for mode, temperature, seeds in modes:
                for seed in seeds:
                    t0 = time.perf_counter()
                    out = tokenforge.generate(model, kept, method=args.method, guide=guide,
                                              max_new_tokens=args.max_new_tokens, stop="\n",
                                              temperature=temperature, seed=seed)
                    wall = time.perf_counter() - t0
                    text = out.text.split("\n")[0]
                    first = IDENTIFIER.match(text)
                    truncated = out.stats.finish_reason == "length"
                    checked, resolved, known = resolver.check(cut, suffix, text, truncated)
                    stats = out.stats.guide or {}
                    record["runs"].append({
                        "guide": name, "mode": mode, "seed": seed, "text": text,
                        "match": bool(first) and first.group() == cut.member,
                        "checked": checked, "resolved": resolved, "receiver_known": known,
                        "parses": parser.parses(cut, line_head + text),
                        "new_tokens": out.stats.new_tokens, "forwards": out.stats.target_forwards,
                        "forced_tokens": stats.get("forced_tokens", 0),
                        "completions_forced": stats.get("completions_forced", 0),
                        "guide_s": stats.get("guide_s", 0.0), "jedi_s": stats.get("jedi_s", 0.0),
                        "wall_s": wall, "finish": out.stats.finish_reason})
        records.append(record)
        if args.progress:
            print(f"[{n + 1}/{len(cuts)}] {cut.file}:{cut.member} "
                  f"{time.perf_counter() - started:.0f}s", flush=True)
    return {"config": {**vars(args), "cuts": len(cuts), "files": len({c.file for c in cuts}),
                       "python": platform.python_version(), "torch": torch.__version__,
                       "wall_s": time.perf_counter() - started},
            "summary": summarise(records), "records": records}


def summarise(records: list[dict]) -> dict:
    out = {}
    runs = [run for record in records for run in record["runs"]]
    for name in GUIDES:
        for mode in ("greedy", "sample"):
            chosen = [r for r in runs if r["guide"] == name and r["mode"] == mode]
            if not chosen:
                continue
            counted = [r for r in chosen if r["checked"]]
            tokens = sum(r["new_tokens"] for r in chosen)
            out[f"{name}/{mode}"] = {
                "completions": len(chosen),
                "match": mean(r["match"] for r in chosen),
                "resolve": mean(r["resolved"] == r["checked"] for r in counted),
                "checked": len(counted),
                "parse": mean(r["parses"] for r in chosen),
                "saved_per_100": 100 * sum(r["forced_tokens"] for r in chosen) / max(tokens, 1),
                "completions_forced": sum(r["completions_forced"] for r in chosen),
                "tokens": tokens,
                "forwards": sum(r["forwards"] for r in chosen),
                "wall_s": mean(r["wall_s"] for r in chosen),
                "guide_s": mean(r["guide_s"] for r in chosen),
                "jedi_s": mean(r["jedi_s"] for r in chosen)}
    out["original_lines_parse"] = mean(r["original_parses"] for r in records)
    out["receivers_known"] = mean(next(x["receiver_known"] for x in r["runs"]) for r in records)
    return out


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def table(summary: dict) -> str:
    head = (f"{'guide/mode':<18}{'n':>5}{'match':>8}{'resolve':>9}{'checked':>9}{'parse':>8}"
            f"{'saved/100':>11}{'forced':>8}{'s/compl':>9}{'guide s':>9}")
    lines = [head, "-" * len(head)]
    for key, row in summary.items():
        if not isinstance(row, dict):
            continue
        lines.append(f"{key:<18}{row['completions']:>5}{row['match']:>8.3f}{row['resolve']:>9.3f}"
                     f"{row['checked']:>9}{row['parse']:>8.3f}{row['saved_per_100']:>11.2f}"
                     f"{row['completions_forced']:>8}{row['wall_s']:>9.3f}{row['guide_s']:>9.3f}")
    lines.append(f"original lines that parse: {summary['original_lines_parse']:.3f}; cuts whose "
                 f"receiver jedi infers: {summary['receivers_known']:.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=50,
                        help="member accesses (prompts); 100: ~6 min on one busy thread")
    parser.add_argument("--samples", type=int, default=5, help="samples per prompt at --temperature")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--prompt-tokens", type=int, default=512, help="the model's window")
    parser.add_argument("--context", choices=("file", "prefix"), default="file",
                        help="what the guides analyse besides the text: the whole file or its prefix")
    parser.add_argument("--method", default="vanilla", help="decoding method (e.g. pld)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="which accesses are picked")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    result = run(args)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1, default=str))
    print(table(result["summary"]))
    print(f"{result['config']['cuts']} accesses in {result['config']['files']} files, "
          f"{result['config']['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
