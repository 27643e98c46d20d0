"""eval-code: pass@k, intervals, the decoders' answers and compute, the CLI and demo-coder."""

from __future__ import annotations

import itertools
import json
from math import comb

import pytest
from typer.testing import CliRunner

from tokenforge import generate, load_model
from tokenforge.cli import app
from tokenforge.decoding.strategies.base import StopRule
from tokenforge.errors import InvalidOptionError
from tokenforge.tasks.coder import IGNORE, collate, encode_task
from tokenforge.tasks.evaluate import (
    Decoded,
    EvalConfig,
    Evaluator,
    PublicTests,
    bootstrap,
    evaluate,
    pass_at_k,
    score,
)
from tokenforge.tasks.sandbox import Limits, Sandbox
from tokenforge.tasks.taskset import Task, load_tasks

TASK = Task(task_id="t", prompt="def add(a, b):\n", entry_point="add", reference="    return a + b\n",
            public_tests=["assert add(1, 2) == 3", "assert add(0, 0) == 0"],
            hidden_tests=["assert add(2, 2) == 4", "assert add(-1, 1) == 0", "assert add(5, 0) == 5"])
RIGHT, WRONG, HALF = "    return a + b\n", "    return a - b\n", "    return a * 0 + b * (a == 0)\n"


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(Limits(wall_s=5.0, per_test_s=1.0), workers=2)


@pytest.fixture(scope="module")
def coder():
    return load_model("demo-coder", device="cpu")


def test_pass_at_k_is_the_combinatorial_estimator():
    for n, c, k in itertools.product(range(1, 9), range(0, 9), range(1, 9)):
        if c <= n and k <= n:
            expected = 1 - comb(n - c, k) / comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(expected)
    # brute force on one case: the share of k-subsets holding a passing sample
    samples = [1, 0, 0, 1, 0]
    subsets = list(itertools.combinations(samples, 2))
    assert pass_at_k(5, 2, 2) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_bootstrap_brackets_the_mean_and_narrows_with_more_tasks():
    few = bootstrap([1.0, 0.0] * 10)
    many = bootstrap([1.0, 0.0] * 500)
    assert few[0] < 0.5 < few[1] and many[0] < 0.5 < many[1]
    assert many[1] - many[0] < few[1] - few[0]
    assert bootstrap([1.0] * 5) == (1.0, 1.0)


def test_config_is_validated():
    with pytest.raises(InvalidOptionError, match="unknown decoder"):
        EvalConfig(decoders=("beam",))
    with pytest.raises(InvalidOptionError, match="must increase"):
        EvalConfig(budgets=(16, 8))
    with pytest.raises(InvalidOptionError, match="temperature"):
        EvalConfig(decoders=("sample",), temperature=0.0)
    assert EvalConfig(decoders=("sample", "filter"), n=10, budgets=(8, 32)).draws == 32
    assert EvalConfig(decoders=("greedy",)).draws == 0


def test_public_tests_run_each_program_once(sandbox):
    calls = []

    class Counting(Sandbox):
        def run_tests(self, program, tests):
            calls.append(program)
            return super().run_tests(program, tests)

    reward = PublicTests(TASK, Counting(sandbox.limits, workers=1))
    assert reward(RIGHT) == 1.0 and reward(WRONG) == 0.5 and reward(RIGHT) == 1.0
    assert len(calls) == 2


def test_filter_answers_the_first_program_that_passes_the_public_tests(sandbox, coder):
    cfg = EvalConfig(decoders=("filter",), budgets=(1, 2, 3, 4))
    evaluator = Evaluator(coder, cfg, sandbox)
    samples = Decoded(answers=[WRONG, HALF, RIGHT, RIGHT], wall_s=1.0,
                      stats={"prompt_tokens": 5, "lengths": [3, 4, 5, 6]})
    run = evaluator._filter(TASK, samples)
    # WRONG passes 1 of 2 public tests, HALF passes add(0, 0) only: the earliest best is kept
    assert run.answers == [WRONG, WRONG, RIGHT, RIGHT]
    assert run.programs_executed == [1, 2, 3, 3]  # the repeated RIGHT is not run again
    assert run.tokens_at_budget == [5 + 3, 10 + 7, 15 + 12, 20 + 18]
    verdicts = score([TASK], [{"filter": run}], sandbox, progress=False)
    assert verdicts == [{"filter": [False, False, True, True]}]


def test_greedy_is_the_engines_greedy_and_every_decoder_reports_compute(sandbox, coder):
    tasks = load_tasks("lab-heldout")[0][:2]
    cfg = EvalConfig(decoders=("greedy", "sample", "filter", "adadec", "pg-td"), n=3,
                     budgets=(2, 4), max_new_tokens=48, threshold=0.5)
    results = evaluate(coder, tasks, cfg, sandbox, progress=False, log=lambda msg: None)
    rows = {(r["task_id"], r["decoder"]): r for r in results["tasks"]}
    for task in tasks:
        plain = generate(coder, task.prompt, max_new_tokens=48,
                         stop=list(StopRule().stop_strings))
        assert rows[(task.task_id, "greedy")]["answers"] == [plain.text]
        assert len(rows[(task.task_id, "sample")]["answers"]) == 3
        for name in ("filter", "pg-td"):
            row = rows[(task.task_id, name)]
            assert len(row["answers"]) == 2 and row["programs_executed"][0] <= 2
            assert row["programs_executed"][0] <= row["programs_executed"][1] <= 4
            assert row["tokens_at_budget"][0] <= row["tokens_at_budget"][1]
    summary = results["summary"]
    assert set(summary) == set(cfg.decoders)
    for entry in summary.values():
        assert entry["tokens_forwarded"] > 0 and entry["wall_s_per_task"] > 0
    assert set(summary["sample"]) >= {"pass@1"} and "pass@10" not in summary["sample"]
    assert set(summary["pg-td"]["budgets"]) == {"2", "4"}


def test_coder_training_scores_the_body_only(coder):
    ids, labels = encode_task(coder.tokenizer, TASK)
    prompt_len = len(coder.tokenizer(TASK.prompt, add_special_tokens=False)["input_ids"])
    assert labels[:prompt_len] == [IGNORE] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:] and ids[-1] == coder.tokenizer.eos_token_id
    batch_ids, batch_labels, mask = collate([(ids, labels), (ids[:3], labels[:3])], pad=0)
    assert batch_ids.shape == (2, len(ids)) and batch_labels.shape == (2, len(ids) - 1)
    assert mask[1].tolist() == [1, 1, 1] + [0] * (len(ids) - 3)
    assert (batch_labels[1] == IGNORE).all()


def test_demo_coder_ships_with_its_card_and_threshold(coder):
    folder = coder.model.name_or_path
    record = json.loads(open(f"{folder}/training.json").read())
    assert 0.15 <= record["greedy_pass@1"]["lab-heldout"]["rate"] <= 0.60
    assert json.loads(open(f"{folder}/adadec.json").read())["threshold"] > 0
    assert "greedy pass@1" in open(f"{folder}/MODEL_CARD.md").read()


@pytest.mark.parametrize("args, message", [
    (["--decoder", "beam"], "unknown decoder"),
    (["--budgets", "8,x"], "comma-separated integers"),
    (["--option", "greedy.x=1"], "take no options"),
    (["--option", "pg-td.top_k=zero"], "expects an integer"),
    (["--option", "adadec.beam=1"], "beam must be"),
    (["--tasks", "nope"], "unknown task set"),
    (["--option", "pg-td.rollouts=4"], "come from --budgets"),
    (["--method", "nope"], "nope"),
    (["--decoder", "adadec", "--threshold", "no-such-file"], "neither a number"),
])
def test_cli_errors_are_one_line(args, message, tmp_path):
    base = ["eval-code", "--model", "demo-coder", "--tasks", "lab-heldout", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, base + args)
    assert result.exit_code != 0
    text = str(result.exception) if result.exception else result.output
    assert message in text


def test_cli_writes_results_report_and_plot(tmp_path):
    out = tmp_path / "ev"
    result = CliRunner().invoke(app, ["eval-code", "--model", "demo-coder", "--tasks",
                                      "lab-heldout", "--limit", "3", "--decoder", "greedy",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    assert summary["n_tasks"] == 3 and "pass@1" in summary["summary"]["greedy"]
    assert len((out / "tasks.jsonl").read_text().splitlines()) == 3
    assert (out / "pass_vs_compute.png").stat().st_size > 10_000
    assert "| greedy |" in (out / "report.md").read_text()


def test_models_lists_demo_coder_with_its_pass_rate(coder):
    record = json.loads(open(f"{coder.model.name_or_path}/training.json").read())
    rate = 100 * record["greedy_pass@1"]["lab-heldout"]["rate"]
    result = CliRunner().invoke(app, ["models"])
    line = next(line for line in result.output.splitlines() if line.startswith("demo-coder"))
    assert f"greedy pass@1 {rate:.1f}% on lab-heldout" in line
