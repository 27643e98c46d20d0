"""Benchmark prompts: Spec-Bench `question.jsonl`, `{"prompt": ...}` lines and the bundled sets.

Both line formats are accepted in one file, detected line by line:
- Spec-Bench / MT-Bench: `{"question_id", "category", "turns": [...]}`: the first turn is the
  prompt, sent through the tokenizer's chat template when the tokenizer has one;
- plain: `{"prompt": "...", "category"?, "id"|"task_id"?}`: the text as it is (a completion prompt).

Bundled sets: `humaneval` (the prompts of the 164 HumanEval tasks of `tasks/data`) and `stdlib-heldout`
(prefixes of the standard-library files held out of the demo models' training, read from the
running interpreter's stdlib with the list in `models/demo/training.json`).
"""

from __future__ import annotations

import hashlib
import json
import platform
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenforge.decoding.api import encode_prompt
from tokenforge.errors import DatasetError
from tokenforge.models.load import DEMO_DIR, LoadedModel

PREFIX_CHARS = 1200  # stdlib-heldout: a file's first ~1200 characters (at most half of it)
MIN_PREFIX_CHARS = 200  # shorter prefixes (small __init__.py files, ...) make no prompt


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    category: str | None = None
    chat: bool = False  # a user turn: goes through the chat template when there is one


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str  # where the prompts came from, for the report
    prompts: tuple[Prompt, ...]


def prompts_sha256(prompts: Iterable[Prompt]) -> str:
    """Identifies the exact prompts of a run, so that two runs can be checked to share them."""
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(json.dumps([prompt.id, prompt.text, prompt.chat]).encode())
    return digest.hexdigest()


def load_dataset(spec: str, category: str | None = None) -> Dataset:
    """A bundled set by name, or a .jsonl file in either format; `category` filters it."""
    if spec in BUNDLED:
        prompts, source = BUNDLED[spec]()
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise DatasetError(f"dataset '{spec}' is neither a bundled set "
                               f"({', '.join(BUNDLED)}) nor an existing .jsonl file")
        prompts, source = read_jsonl(path), str(path)
    if category is not None:
        kept = [p for p in prompts if p.category == category]
        if not kept:
            found = sorted({p.category for p in prompts if p.category is not None})
            raise DatasetError(f"no prompt of category '{category}' in {spec}; its categories: "
                               f"{', '.join(found) or 'none'}")
        prompts = kept
    return Dataset(name=spec, source=source, prompts=tuple(prompts))


def read_jsonl(path: Path) -> list[Prompt]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read dataset {path}: {err}") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path}:{number}: not valid JSON ({err.msg}); each line must be "
                               "one JSON object") from None
        prompts.append(parse_record(record, f"{path}:{number}", default_id=str(number)))
    if not prompts:
        raise DatasetError(f"{path} holds no prompts")
    return prompts


def parse_record(record: object, where: str, default_id: str) -> Prompt:
    """One JSON line -> Prompt (Spec-Bench `turns` or plain `prompt`)."""
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "turns" in record:
        turns = record["turns"]
        if not (isinstance(turns, list) and turns and isinstance(turns[0], str) and turns[0]):
            raise DatasetError(f"{where}: 'turns' must be a list whose first item is a "
                               "non-empty string")
        text, chat = turns[0], True
    elif "prompt" in record:
        text, chat = record["prompt"], False
        if not isinstance(text, str) or not text:
            raise DatasetError(f"{where}: 'prompt' must be a non-empty string")
    else:
        raise DatasetError(f"{where}: expected Spec-Bench's {{\"turns\": [...]}} or "
                           f"{{\"prompt\": ...}}, got the keys {sorted(record)}")
    ident = next((record[k] for k in ("question_id", "task_id", "id") if k in record), default_id)
    category = record.get("category")
    return Prompt(str(ident), text, None if category is None else str(category), chat)


def encode(loaded: LoadedModel, prompt: Prompt) -> list[int]:
    """Token ids of a prompt: a chat turn through the chat template if the tokenizer has one."""
    tokenizer = loaded.tokenizer
    text = prompt.text
    if prompt.chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                             add_generation_prompt=True, tokenize=False)
    return encode_prompt(loaded, text)


def humaneval() -> tuple[list[Prompt], str]:
    """The prompts of the code-task lab's HumanEval set (`tasks/data`, with its licence)."""
    from tokenforge.tasks.taskset import humaneval as tasks

    return ([Prompt(task.task_id, task.prompt) for task in tasks()],
            "OpenAI HumanEval prompts (MIT), bundled")


def stdlib_heldout() -> tuple[list[Prompt], str]:
    """Prefixes of the demo corpus' held-out files, from this interpreter's stdlib."""
    record_path = DEMO_DIR / "training.json"
    try:
        files = json.loads(record_path.read_text())["corpus"]["heldout_files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DatasetError(f"stdlib-heldout needs the demo models' training record {record_path} "
                           "with corpus.heldout_files; rebuild it with `tokenforge train-demo`, "
                           "or use --dataset humaneval") from None
    root = Path(sysconfig.get_paths()["stdlib"])
    prompts = []
    for rel in files:
        path = root / rel
        if path.is_file():
            prefix = file_prefix(path.read_text(encoding="utf-8", errors="replace"))
            if len(prefix) >= MIN_PREFIX_CHARS:
                prompts.append(Prompt(rel, prefix, "stdlib"))
    if not prompts:
        raise DatasetError(f"none of the {len(files)} held-out files listed in {record_path} "
                           f"was found (with {MIN_PREFIX_CHARS}+ characters) under {root}")
    source = (f"first ~{PREFIX_CHARS} characters (at most half) of {len(prompts)} of the "
              f"{len(files)} held-out files of the demo corpus, from the stdlib of Python "
              f"{platform.python_version()}")
    return prompts, source


def file_prefix(text: str, chars: int = PREFIX_CHARS) -> str:
    """The first `chars` characters of `text`, at most half of it (so that there is always a
    continuation to generate, not just the end of the file), cut back to the end of a line."""
    chars = min(chars, len(text) // 2)
    cut = text.rfind("\n", 0, chars)
    return text[: cut + 1] if cut > 0 else text[:chars]


BUNDLED = {"humaneval": humaneval, "stdlib-heldout": stdlib_heldout}
