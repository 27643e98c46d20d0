"""The code-task lab's generator and task sets."""

from __future__ import annotations

import ast
import json

import pytest

from tokenforge.errors import DatasetError
from tokenforge.tasks.generator import families, generate_tasks, make_task
from tokenforge.tasks.taskset import (
    DATA_DIR,
    doctest_asserts,
    load_tasks,
    read_tasks,
    write_tasks,
)


def run_tests_in_process(program: str, tests: list[str]) -> int:
    """Count passing tests of the generator's own reference (project code, not model output)."""
    namespace: dict = {}
    exec(program, namespace)  # noqa: S102
    passed = 0
    for test in tests:
        try:
            exec(test, namespace)  # noqa: S102
            passed += 1
        except AssertionError:
            pass
    return passed


def test_split_is_by_family_and_heldout_combines_seen_stages():
    fams = families()
    train = {f.name for f in fams if not f.heldout}
    held = [f for f in fams if f.heldout]
    assert held and train and not train & {f.name for f in held}
    stages = [set() for _ in range(4)]
    for name in train:
        for i, part in enumerate(name.split("/")):
            stages[i].add(part)
    for fam in held:  # a held-out family is a new composition of stages training has seen
        assert all(part in stages[i] for i, part in enumerate(fam.name.split("/")))
    tasks = list(generate_tasks("train", 300, seed=0))
    assert not {t.family for t in tasks} & {f.name for f in held}


def test_generated_tasks_are_complete_and_their_references_pass():
    for split in ("train", "heldout"):
        for task in generate_tasks(split, 60, seed=3):
            assert len(task.hidden_tests) >= 10 and 2 <= len(task.public_tests) <= 3
            assert task.prompt.startswith(f"def {task.entry_point}(")
            assert f">>> {task.entry_point}(" in task.prompt  # examples in the docstring
            ast.parse(task.prompt + task.reference)
            program = task.prompt + task.reference
            assert run_tests_in_process(program, task.hidden_tests) == len(task.hidden_tests)
            assert run_tests_in_process(program, task.public_tests) == len(task.public_tests)
            # a wrong body fails: the tests tell solutions apart
            wrong = task.prompt + "    return None\n"
            assert run_tests_in_process(wrong, task.hidden_tests) < len(task.hidden_tests)


def test_generator_is_seeded():
    first = [t.to_json() for t in generate_tasks("train", 20, seed=5)]
    assert first == [t.to_json() for t in generate_tasks("train", 20, seed=5)]
    assert first != [t.to_json() for t in generate_tasks("train", 20, seed=6)]


def test_a_rendering_bug_is_caught_at_generation_time(monkeypatch):
    import random

    import tokenforge.tasks.generator as gen

    fam = next(f for f in families() if f.name == "list/odd/square/sum")
    monkeypatch.setattr(gen, "_code", lambda fam, w: f"sum(x for x in {w.arg})")
    with pytest.raises(AssertionError, match="generator bug"):
        make_task(fam, random.Random(0), "t")


def test_bundled_heldout_set_is_the_generators_output():
    tasks, _ = load_tasks("lab-heldout")
    assert len(tasks) == 200 and len({t.family for t in tasks}) >= 150
    assert all(t.family in {f.name for f in families() if f.heldout} for t in tasks)
    regenerated = [t.to_json() for t in generate_tasks("heldout", 200, seed=0)]
    assert [t.to_json() for t in tasks] == regenerated


def test_humaneval_set_has_checks_and_docstring_examples():
    tasks, _ = load_tasks("humaneval")
    assert len(tasks) == 164
    first = tasks[0]
    assert first.hidden_tests[0].endswith(f"check({first.entry_point})")
    assert run_tests_in_process(first.prompt + first.reference, first.hidden_tests) == 1
    with_examples = [t for t in tasks if t.public_tests]
    assert len(with_examples) > 60
    for task in with_examples[:40]:
        assert run_tests_in_process(task.prompt + task.reference, task.public_tests) == len(
            task.public_tests), task.task_id


def test_doctest_asserts_keep_only_literal_results():
    prompt = '    """\n    >>> f(1)\n    2\n    >>> g(x)\n    something odd\n    >>> h()\n    [1, 2]\n'
    assert doctest_asserts(prompt) == ["assert f(1) == 2", "assert h() == [1, 2]"]


def test_task_files_round_trip_and_bad_files_say_why(tmp_path):
    tasks = list(generate_tasks("train", 3, seed=0))
    path = tmp_path / "t.jsonl"
    write_tasks(tasks, path)
    assert read_tasks(path) == tasks
    assert load_tasks(str(path))[0] == tasks
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": "x", "prompt": "def f():\n"}) + "\n")
    with pytest.raises(DatasetError, match="lacks entry_point"):
        read_tasks(bad)
    with pytest.raises(DatasetError, match="unknown task set"):
        load_tasks("nope")
    assert load_tasks("lab-train:2:7")[0] == list(generate_tasks("train", 7, seed=2))
    assert (DATA_DIR / "humaneval.LICENSE").is_file()
