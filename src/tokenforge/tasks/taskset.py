"""Task sets: the `Task` record and the sets `eval-code` reads.

- `lab-heldout`: 200 tasks of the generator's held-out families, shipped as data
  (`data/lab-heldout.jsonl`, rebuilt by `tokenforge make-tasks`).
- `lab-train`: the generator's training families, made on the fly from a seed (`lab-train`,
  `lab-train:SEED` or `lab-train:SEED:COUNT`; default seed 0, 4000 tasks).
- `humaneval`: OpenAI's 164 HumanEval problems (MIT licence, bundled); the hidden test is the
  problem's `check` function, the public tests are the examples of its docstring where they parse.
- a `.jsonl` file of Task records (the fields below; `public_tests`, `hidden_tests`: lists of
  Python statements, usually asserts, run after the program).
"""

from __future__ import annotations

import ast
import gzip
import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from tokenforge.errors import DatasetError

DATA_DIR = Path(__file__).parent / "data"
LAB_TRAIN_DEFAULT = (0, 4000)
SETS = ("lab-heldout", "lab-train", "humaneval")


@dataclass
class Task:
    task_id: str
    prompt: str  # the code the model continues: imports, signature, docstring
    entry_point: str
    reference: str  # a correct completion of the prompt ("" when unknown)
    public_tests: list[str]  # shown to the decoder (PG-TD's reward, filtering)
    hidden_tests: list[str]  # decide the reported result
    family: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def write_tasks(tasks: list[Task], path: Path) -> None:
    path.write_text("".join(task.to_json() + "\n" for task in tasks))


def read_tasks(path: Path) -> list[Task]:
    names = {f.name for f in fields(Task)}
    required = names - {"family", "reference"}
    tasks = []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path}:{number} is not JSON ({err.msg})") from None
            missing = required - row.keys() if isinstance(row, dict) else required
            if missing:
                raise DatasetError(f"{path}:{number} lacks {', '.join(sorted(missing))}: a task "
                                   f"line needs {', '.join(sorted(required))}")
            tasks.append(Task(**{k: v for k, v in row.items() if k in names}))
    if not tasks:
        raise DatasetError(f"{path} holds no tasks")
    return tasks


def doctest_asserts(prompt: str) -> list[str]:
    """The docstring's `>>> call` / `result` pairs as asserts (those whose result parses as a
    Python literal)."""
    tests = []
    lines = prompt.splitlines()
    for i, line in enumerate(lines[:-1]):
        call = line.strip()
        if not call.startswith(">>> "):
            continue
        result = lines[i + 1].strip()
        try:
            ast.literal_eval(result)
            ast.parse(call[4:], mode="eval")
        except (ValueError, SyntaxError):
            continue
        tests.append(f"assert {call[4:]} == {result}")
    return tests


def humaneval() -> list[Task]:
    tasks = []
    with gzip.open(DATA_DIR / "humaneval.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            check = f"{row['test']}\ncheck({row['entry_point']})"
            tasks.append(Task(task_id=row["task_id"], prompt=row["prompt"],
                              entry_point=row["entry_point"], reference=row["canonical_solution"],
                              public_tests=doctest_asserts(row["prompt"]), hidden_tests=[check],
                              family="humaneval"))
    return tasks


def lab_train(seed: int, count: int) -> list[Task]:
    from tokenforge.tasks.generator import generate_tasks

    return list(generate_tasks("train", count, seed))


def load_tasks(spec: str) -> tuple[list[Task], str]:
    """The tasks of `spec` (a set name or a .jsonl file) and a one-line description."""
    if spec == "lab-heldout":
        return read_tasks(DATA_DIR / "lab-heldout.jsonl"), "lab-heldout: 200 generated tasks " \
            "of held-out families"
    if spec == "humaneval":
        return humaneval(), "HumanEval: 164 problems (OpenAI, MIT licence)"
    match = re.fullmatch(r"lab-train(?::(\d+))?(?::(\d+))?", spec)
    if match:
        seed = int(match.group(1) or LAB_TRAIN_DEFAULT[0])
        count = int(match.group(2) or LAB_TRAIN_DEFAULT[1])
        return lab_train(seed, count), f"lab-train: {count} generated tasks, seed {seed}"
    path = Path(spec).expanduser()
    if path.suffix in (".jsonl", ".gz") and path.is_file():
        return read_tasks(path), f"{path}: tasks from a file"
    raise DatasetError(f"unknown task set '{spec}': use {', '.join(SETS)}, lab-train:SEED:COUNT "
                       "or a .jsonl file of tasks")
