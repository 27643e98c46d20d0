"""The guide options of `tokenforge generate` and `tokenforge bench` (declared once in
cli_common.py): guided output on the demo model, one-line errors (exit 2) for missing or invalid
files and bad grammars, the "guide" finish reason, and a guided benchmark."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from typer.testing import CliRunner

from tokenforge.bench.runner import plan_methods, unguided_left_out
from tokenforge.cli import app, main
from tokenforge.guides.base import DenyTokens

SCHEMA = {"type": "object",
          "properties": {"id": {"type": "integer"}, "label": {"type": "string", "maxLength": 12}},
          "required": ["id", "label"], "additionalProperties": False}
runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("guides")
    (folder / "schema.json").write_text(json.dumps(SCHEMA))
    (folder / "imports.lark").write_text('start: "import " NAME "\\n"\nNAME: /[a-z]{1,10}/\n')
    (folder / "broken.json").write_text('{"type": "object",')
    (folder / "broken.lark").write_text("start: missing_rule\n")
    (folder / "empty.lark").write_text("   \n")
    (folder / "latin1.lark").write_bytes(b'start: "caf\xe9"\n')
    return folder


def generate(args: list[str]):
    result = runner.invoke(app, ["generate", *args, "--max-new-tokens", "48"])
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result


def failing(monkeypatch, capsys, args: list[str]) -> str:
    """Run the command as `tokenforge` does; it must exit 2 with one line on stderr."""
    monkeypatch.setattr("sys.argv", ["tokenforge", *args])
    with pytest.raises(SystemExit) as info:
        main()
    lines = capsys.readouterr().err.splitlines()
    assert info.value.code == 2, (args, lines)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_generate_with_a_json_schema_file(files):
    prompt = "record = "
    result = generate([prompt, "--json-schema", str(files / "schema.json"),
                       "--method", "token-recycling"])
    text = result.stdout.removeprefix(prompt).removesuffix("\n")
    jsonschema.validate(json.loads(text), SCHEMA)
    assert "finish: eos" in result.stderr and "guide json_schema:" in result.stderr


def test_generate_with_regex_grammar_and_json_object(files):
    result = generate(["x = 1\n", "--regex", r"(def|class) [a-z_]{1,12}\(\):", "--no-stats"])
    assert re.fullmatch(r"x = 1\n(def|class) [a-z_]{1,12}\(\):\n", result.stdout), result.stdout
    assert result.stderr == ""
    result = generate(["#!/usr/bin/env python\n", "--grammar", str(files / "imports.lark")])
    assert re.fullmatch(r"#!/usr/bin/env python\nimport [a-z]{1,10}\n\n", result.stdout)
    result = generate(["data = ", "--json-object", "--method", "pld"])
    assert isinstance(json.loads(result.stdout.removeprefix("data = ")), dict)


@pytest.mark.parametrize("args, words", [
    (["--json-schema", "{nope}/schema.json"], ["'--json-schema'", "does not exist"]),
    (["--grammar", "{files}"], ["'--grammar'", "is a directory"]),
    (["--json-schema", "{files}/broken.json"], ["broken.json is not valid JSON", "line 1"]),
    (["--grammar", "{files}/broken.lark"], ["invalid Lark grammar", 'unknown name: "missing_rule"']),
    (["--grammar", "{files}/empty.lark"], ["--grammar", "empty.lark is empty"]),
    (["--grammar", "{files}/latin1.lark"], ["cannot read --grammar", "utf-8"]),
    (["--regex", "(abc"], ["invalid regex", "unclosed group"]),
    (["--regex", ""], ["--regex is empty"]),
    (["--regex", "[a-z]+", "--json-object"], ["one grammar at a time"]),
    (["--monitor", "java"], ["unknown monitor 'java'", "python"]),
])
def test_generate_guide_mistakes_are_one_line_errors(files, monkeypatch, capsys, args, words):
    args = [arg.format(files=files, nope=files / "nope") for arg in args]
    line = failing(monkeypatch, capsys, ["generate", "x", *args])
    for word in words:
        assert word in line, (word, line)


def test_generate_prints_the_guide_finish_reason(monkeypatch):
    """A guide that allows no token ends the generation at once, and the command says so."""
    monkeypatch.setattr("tokenforge.guides.make_guide",
                        lambda loaded, spec: DenyTokens(list(range(len(loaded.tokenizer)))))
    result = runner.invoke(app, ["generate", "x = ", "--json-object", "--no-stats"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "x = \n"
    assert result.stderr == "finish: guide (the guide deny allowed no next token)\n"


def test_bench_runs_every_method_under_the_guide(files, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, [
        "bench", "--model", "demo", "--methods", "pld", "--dataset", "humaneval", "--limit", "2",
        "--max-new-tokens", "16", "--warmup", "0", "--no-progress", "--device", "cpu",
        "--json-schema", str(files / "schema.json"), "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["guide"] == {"json_schema": SCHEMA}
    assert data["settings"]["unguided_left_out"] == []
    for name in ("vanilla", "pld"):
        method = data["methods"][name]
        assert method["lossless_rate"] == 1.0
        assert 0 < method["time_split"]["guide_s"] < method["time_split"]["total_s"]
        assert 0 < method["time_split"]["guide_share"] < 1
    report = (out / "report.md").read_text()
    assert "- Guided: json_schema" in report and "guide share" in report


def test_bench_refuses_baselines_under_a_guide(files, monkeypatch, capsys):
    line = failing(monkeypatch, capsys, [
        "bench", "--model", "demo", "--methods", "pld,hf-greedy", "--dataset", "humaneval",
        "--out", "x", "--regex", "[a-z]+"])
    assert "method 'hf-greedy' cannot take a guide" in line
    line = failing(monkeypatch, capsys, [
        "bench", "--model", "demo", "--methods", "pld", "--dataset", "humaneval", "--limit", "1",
        "--out", "x", "--grammar", str(files / "broken.lark")])
    assert "invalid Lark grammar" in line
    names = [plan.spec.name for plan in plan_methods(["all"], {}, has_draft=False, guided=True)]
    assert "pld" in names and not any(name.startswith("hf-") for name in names)
    assert unguided_left_out(["all"], has_draft=False) == ["hf-greedy", "hf-pld"]
    assert unguided_left_out(["all"], has_draft=True) == ["hf-greedy", "hf-pld", "hf-assisted"]
    assert unguided_left_out(["pld"], has_draft=True) == []
