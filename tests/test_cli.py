"""The `tokenforge` command as a user meets it, run in a subprocess: every mistake ends in one
line on stderr that says what to do (exit 2), Ctrl-C in one line (exit 130), and each --help fits
80 columns. Runs that do not depend on each other go in parallel, to keep the file fast."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import typer

from tokenforge.cli import app, main
from tokenforge.models.load import DEMO_DIR

ENV = {"HF_HUB_OFFLINE": "1", "PATH": "", "OMP_NUM_THREADS": "1"}
COMMAND = [sys.executable, "-m", "tokenforge"]
BENCH = ["bench", "--model", "demo", "--methods", "pld", "--dataset", "humaneval", "--out", "x"]


def tokenforge(args: list[str | bytes], env: dict[str, str] = ENV,
               cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=cwd)


def tokenforge_all(runs: list[list[str | bytes]], env: dict[str, str] = ENV
                   ) -> list[subprocess.CompletedProcess]:
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda args: tokenforge(args, env), runs))


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *words: str) -> None:
    lines = proc.stderr.splitlines()
    assert proc.returncode == code, (proc.args, proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), (proc.args, proc.stderr)
    for word in words:
        assert word in lines[0], (proc.args, word, lines[0])


USAGE_MISTAKES = [
    (["generate"], ["missing argument 'prompt'", "see `tokenforge generate --help`"]),
    (["generate", "--max-new-tokens", "abc", "x"],
     ["'--max-new-tokens'", "see `tokenforge generate --help`"]),
    (["generat"], ["no such command 'generat'", "'generate'", "see `tokenforge --help`"]),
    (["serve", "--port", "99999"], ["'--port'", "65535", "see `tokenforge serve --help`"]),
    (["generate", "--temperature", "nan", "x"], ["'--temperature': nan is not a finite number"]),
    ([*BENCH, "--temperature", "inf"], ["inf is not a finite number", "tokenforge bench --help"]),
    (["bench", "--model", "demo", "--methods", "", "--dataset", "humaneval", "--out", "x"],
     ["--methods names no method", "--methods all"]),
    (["generate", b"\xff\xfe"], ["'prompt'", "not valid UTF-8"]),
]


def test_usage_mistakes_print_one_line_and_exit_2():
    procs = tokenforge_all([args for args, _ in USAGE_MISTAKES])
    for (_, words), proc in zip(USAGE_MISTAKES, procs):
        assert_one_line_error(proc, 2, *words)


@pytest.mark.parametrize("args, words", [
    (["serve", "--port", "0"], ["'--port'", "greater than or equal to 1"]),
    (["generate", "--temperature", "inf", "x"], ["'--temperature': inf is not a finite number"]),
    (["generate", "--top-p", "nan", "x"], ["'--top-p': nan is not a finite number"]),
    ([*BENCH, "--temperature", "-inf"], ["'--temperature': -inf is not a finite number"]),
    (["bench", "--model", "demo", "--methods", " , ", "--dataset", "humaneval", "--out", "x"],
     ["--methods names no method"]),
    (["tokenizer"], ["Usage: tokenforge tokenizer"]),
])
def test_more_mistakes_in_process(monkeypatch, capsys, args, words):
    monkeypatch.setattr(sys, "argv", ["tokenforge", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    for word in words:
        assert word in err


def test_ctrl_c_exits_130_with_one_line():
    # The demo model repeats itself here rather than stop: 900 tokens take seconds.
    # The child starts with SIGINT at its default: a process that ignores SIGINT passes that on
    # to its children, and a test worker can end up ignoring it (a library earlier in the run).
    proc = subprocess.Popen([*COMMAND, "generate", "--model", "demo", "--device", "cpu",
                             "--max-new-tokens", "900", "--no-stats", "def parse_args(argv):"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        started = proc.stdout.read1(4096)  # the prompt, flushed with the first new text
        assert started.startswith(b"def parse_args(argv):"), (started, proc.stderr.read())
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err.decode() == "error: interrupted (Ctrl-C)\n", err


def test_unreachable_hub_is_said_at_once():
    # No HF_HUB_OFFLINE: the hub is TEST-NET-1 (RFC 5737), which no network routes. The hub
    # client alone would retry for over 20 s; this takes the start-up and at most 2 s more.
    env = {"PATH": "", "OMP_NUM_THREADS": "1", "HF_ENDPOINT": "https://192.0.2.1"}
    start = time.monotonic()
    proc = tokenforge(["generate", "--model", "nosuch-model", "x"], env)
    assert time.monotonic() - start < 15
    assert_one_line_error(proc, 2, "unknown model 'nosuch-model'", "hub is unreachable",
                          "https://192.0.2.1", "pass the local directory")


def test_truncated_weights_are_named(tmp_path):
    model = shutil.copytree(DEMO_DIR / "demo-draft", tmp_path / "model")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    proc = tokenforge(["generate", "--model", str(model), "--device", "cpu", "x"])
    assert_one_line_error(proc, 2, "corrupt or truncated", "download or save the model again")


def test_help_fits_80_columns_with_every_option_in_full():
    commands = ["generate", "bench", "serve"]
    procs = tokenforge_all([[name, "--help"] for name in commands], env={**ENV, "COLUMNS": "80"})
    group = typer.main.get_command(app)
    for name, proc in zip(commands, procs):
        assert proc.returncode == 0, proc.stderr
        assert max(len(line) for line in proc.stdout.splitlines()) <= 80, proc.stdout
        for param in group.commands[name].params:
            for option in (*param.opts, *param.secondary_opts):
                assert option in proc.stdout, (name, option, proc.stdout)
    assert "--trust-remote-code" in procs[0].stdout and "--method-option" in procs[1].stdout
    assert "--max-tokens-cap" in procs[2].stdout


def test_tokenizer_eval_writes_under_out_by_default(tmp_path):
    corpus = tmp_path / "corpus.py"
    corpus.write_text(Path(typer.__file__).read_text())
    proc = tokenforge(["tokenizer", "eval", "--tokenizer", "demo", "--corpus", str(corpus)],
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = Path("out", "tokenizer-eval")
    assert f"wrote {out / 'table.md'}" in proc.stdout
    assert (tmp_path / out / "tokenizers.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.py", "out"]
