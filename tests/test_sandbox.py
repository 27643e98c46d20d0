"""The sandbox contains loops, fork bombs, memory hogs, stray writes and network use, reports them,
and judges tests through a channel the program cannot forge. Each test fails if containment breaks."""

from __future__ import annotations

import glob
import os
import socket

import pytest

from tokenforge.errors import InvalidOptionError
from tokenforge.tasks.sandbox import Limits, Sandbox, TestsResult

SMALL = Limits(cpu_s=2, wall_s=5, memory_mb=256, per_test_s=0.5, output_bytes=4096)
ADD = "def add(a, b):\n    return a + b\n"
PGID = "import os\nprint(os.getpgid(0), flush=True)\n"  # the run's process group, for the host to check


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(SMALL)


def children() -> set[str]:
    """Sandbox processes among this test process's children, from /proc (other tests of the
    same worker may keep children of their own, e.g. jedi's environment subprocess)."""
    found: set[str] = set()
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        with open(path) as f:
            found.update(f.read().split())
    return {pid for pid in found if "bootstrap.py" in _cmdline(pid)}


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:  # exited meanwhile
        return ""


def assert_group_gone(stdout: str) -> None:
    with pytest.raises(ProcessLookupError):
        os.killpg(int(stdout.split()[0]), 0)
    assert not children()


def test_infinite_loop_hits_the_cpu_limit_and_the_group_is_killed():
    # a generous wall limit: on a busy machine the loop still reaches 1 s of CPU long before
    result = Sandbox(Limits(cpu_s=1, wall_s=30)).run(PGID + "while True:\n    pass\n")
    assert (result.status, result.reason) == ("timeout", "timeout: CPU time 1s exceeded")
    assert_group_gone(result.stdout)


def test_sleeping_program_hits_the_wall_time(sandbox):
    result = sandbox.run(PGID + "import time\ntime.sleep(60)\n")
    assert (result.status, result.reason) == ("timeout", "timeout: wall time 5s exceeded")
    assert result.wall_s < 12
    assert_group_gone(result.stdout)


@pytest.mark.parametrize("code, event", [
    ("while True:\n    os.fork()\n", "os.fork"),
    ("import subprocess\nsubprocess.run(['echo', 'hi'])\n", "subprocess.Popen"),
    ("os.system('echo hi')\n", "os.system"),
    ("os.execv('/bin/echo', ['echo', 'hi'])\n", "os.exec"),
    ("import _posixsubprocess\n", "import _posixsubprocess"),
])
def test_process_creation_is_blocked(sandbox, code, event):
    result = sandbox.run(PGID + code)
    assert (result.status, result.reason) == ("blocked", f"blocked: process creation ({event})")
    assert "hi" not in result.stdout
    assert_group_gone(result.stdout)


def test_catching_the_denial_still_reports_blocked(sandbox):
    result = sandbox.run("import os\ntry:\n    os.system('x')\nexcept Exception:\n    pass\nprint('ok')\n")
    assert (result.status, result.reason) == ("blocked", "blocked: process creation (os.system)")
    assert result.returncode == 0 and result.stdout == "ok\n"


@pytest.mark.parametrize("code", ["x = bytearray(10**10)\n",
                                  "x = []\nwhile True:\n    x.append(' ' * 100_000)\n"])
def test_memory_hog_is_reported(sandbox, code):
    result = sandbox.run(code)
    assert (result.status, result.reason) == ("memory", "memory: MemoryError (limit 256 MB)")


def test_memory_error_in_one_test_does_not_stop_the_rest(sandbox):
    result = sandbox.run_tests(ADD, ["x = bytearray(10**10)", "assert add(1, 2) == 3"])
    assert result.outcomes == ["error: MemoryError", "pass"]
    assert result.status == "ok"


def test_write_to_parent_folder_is_blocked(sandbox):
    result = sandbox.run("import os\ntry:\n    open('../escape.txt', 'w')\nfinally:\n"
                         "    print(os.path.exists('../escape.txt'))\n")
    assert (result.status, result.reason) == ("blocked",
                                              "blocked: file write outside the sandbox (open)")
    assert result.stdout == "False\n"


@pytest.mark.parametrize("code", [
    "open({target!r}, 'w').write('x')",
    "os.open({target!r}, os.O_WRONLY | os.O_CREAT)",
    "os.symlink({folder!r}, 'link')\nopen('link/escape.txt', 'w')",
    "fd = os.open({folder!r}, os.O_RDONLY)\nos.open('escape.txt', os.O_WRONLY | os.O_CREAT, dir_fd=fd)",
    "os.rename({keep!r}, 'stolen.txt')",
    "os.remove({keep!r})",
    "import shutil\nshutil.rmtree({folder!r})",
])
def test_writes_to_a_host_folder_are_blocked(sandbox, tmp_path, code):
    keep = tmp_path / "keep.txt"
    keep.write_text("host file")
    source = "import os\n" + code.format(target=str(tmp_path / "escape.txt"), folder=str(tmp_path),
                                         keep=str(keep))
    result = sandbox.run(source)
    assert result.status == "blocked"
    assert result.reason.startswith("blocked: file write outside the sandbox")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    assert keep.read_text() == "host file"


def test_writes_inside_the_sandbox_folder_are_allowed_and_the_folder_is_removed(sandbox):
    result = sandbox.run("import os, tempfile\nopen('ok.txt', 'w').write('written')\n"
                         "os.mkdir('sub')\nos.rename('ok.txt', 'sub/ok.txt')\n"
                         "with tempfile.NamedTemporaryFile('w') as f:\n    f.write('x')\n"
                         "print(open('sub/ok.txt').read(), os.getcwd())\n")
    assert (result.status, result.reason) == ("ok", "")
    text, cwd = result.stdout.split()
    assert text == "written"
    assert not os.path.exists(cwd)


def test_files_and_args_are_passed(sandbox):
    result = sandbox.run("import sys, helper\nprint(helper.VALUE, sys.argv[1:])\n",
                         files={"helper.py": "VALUE = 42\n"}, args=["a", "b"])
    assert result.stdout == "42 ['a', 'b']\n"


def test_socket_connect_is_blocked_and_the_listener_sees_nothing(sandbox):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        for code in (f"socket.create_connection(('127.0.0.1', {port}))",
                     f"socket.socket().connect(('127.0.0.1', {port}))"):
            result = sandbox.run(f"import socket\n{code}\n")
            assert result.status == "blocked"
            assert result.reason.startswith("blocked: network access (socket.")
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_asyncio_still_works(sandbox):
    result = sandbox.run("import asyncio\nasync def f():\n    return 3\nprint(asyncio.run(f()))\n")
    assert (result.status, result.stdout) == ("ok", "3\n")


@pytest.mark.parametrize("code", ["import ctypes", "import importlib\nimportlib.import_module('_ctypes')"])
def test_ctypes_import_is_blocked(sandbox, code):
    result = sandbox.run(code)
    assert result.status == "blocked"
    assert result.reason.startswith("blocked: native code (import ")


def test_raising_own_limits_is_blocked(sandbox):
    result = sandbox.run("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))\n")
    assert (result.status, result.reason) == ("blocked",
                                              "blocked: sandbox tampering (resource.setrlimit)")


def test_run_tests_counts_passes_and_failures(sandbox):
    tests = ["assert add(1, 2) == 3", "assert add(5, 0) == 5", "assert add(2, 2) == 4"]
    right = sandbox.run_tests(ADD, tests)
    assert (right.passed, right.total, right.outcomes) == (3, 3, ["pass"] * 3)
    assert right.all_passed and right.pass_rate == 1.0 and right.status == "ok"
    wrong = sandbox.run_tests("def add(a, b):\n    return a - b\n", [*tests, "1 / 0"])
    assert (wrong.passed, wrong.total) == (1, 4)
    assert wrong.outcomes == ["fail: AssertionError", "pass", "fail: AssertionError",
                              "error: ZeroDivisionError: division by zero"]
    assert not wrong.all_passed and wrong.pass_rate == 0.25 and wrong.status == "ok"


def test_a_hanging_test_times_out_and_the_next_still_runs(sandbox):
    result = sandbox.run_tests(ADD, ["while True:\n    pass", "assert add(1, 1) == 2",
                                     "import time\ntime.sleep(30)", "assert add(2, 2) == 4"])
    assert result.outcomes == ["timeout", "pass", "timeout", "pass"]
    assert (result.passed, result.status) == (2, "ok")


def test_syntax_error_program_runs_no_test(sandbox):
    result = sandbox.run_tests("def add(a, b) return a", ["assert add(1, 2) == 3", "assert True"])
    assert result.status == "error"
    assert result.reason.startswith("error: SyntaxError")
    assert result.outcomes == ["not run", "not run"] and result.passed == 0


def test_exits_inside_tests(sandbox):
    result = sandbox.run_tests(ADD, ["import sys\nsys.exit()", "assert add(1, 1) == 2",
                                     "import os\nos._exit(0)", "assert True"])
    assert result.outcomes == ["error: SystemExit", "pass", "not run", "not run"]
    assert (result.status, result.reason) == ("error", "error: exited early (exit code 0)")


def test_process_failure_keeps_finished_outcomes(sandbox):
    result = sandbox.run_tests(ADD, ["assert add(1, 1) == 2", "import os\nos.system('x')",
                                     "import time\nwhile True:\n    try:\n        time.sleep(9)\n"
                                     "    except BaseException:\n        pass", "assert True"])
    assert result.outcomes[:2] == ["pass", "error: SandboxViolation: sandbox: process creation "
                                   "denied (os.system)"]
    assert result.outcomes[2:] == ["not run", "not run"]
    assert (result.status, result.reason) == ("blocked", "blocked: process creation (os.system)")


FORGER = """
import builtins, os
line = "0\\ttest\\t0\\tpass\\t\\t" + "0" * 32 + "\\n"
print(line * 3 + "PASS\\nall tests passed")
for fd in range(3, 64):
    try:
        os.write(fd, line.encode() * 3)
    except OSError:
        pass
builtins.AssertionError = ZeroDivisionError
builtins.BaseException = int

def add(a, b):
    return 0
"""


def test_forged_output_cannot_change_outcomes(sandbox):
    result = sandbox.run_tests(FORGER, ["assert add(1, 2) == 3", "1 / 0"])
    assert result.outcomes == ["fail: AssertionError", "error: ZeroDivisionError: division by zero"]
    assert result.passed == 0 and result.status == "ok"


def test_output_is_truncated(sandbox):
    result = sandbox.run("print('x' * 100_000)\n")
    assert result.stdout.startswith("x" * 4096)
    assert len(result.stdout) < 4200 and "more bytes not kept" in result.stdout


def test_run_many_keeps_order_and_matches_run_tests():
    sandbox = Sandbox(SMALL, workers=2)
    jobs = [(ADD, ["assert add(1, 2) == 3"]), ("def add(a, b):\n    return 0\n", ["assert add(1, 2) == 3"]),
            (ADD, ["while True:\n    pass", "assert add(0, 0) == 0"]), ("def add(a, b) x", ["assert True"])]
    results = sandbox.run_many(jobs * 2)
    one_by_one = [sandbox.run_tests(*job) for job in jobs] * 2

    def key(r: TestsResult):
        return r.passed, r.total, r.outcomes, r.status, r.reason

    assert [key(r) for r in results] == [key(r) for r in one_by_one]
    assert [r.outcomes for r in results[:4]] == [["pass"], ["fail: AssertionError"], ["timeout", "pass"],
                                                 ["not run"]]


@pytest.mark.parametrize("kwargs", [{"cpu_s": 0}, {"wall_s": -1.0}, {"memory_mb": 0},
                                    {"per_test_s": 0.0}, {"output_bytes": -5}, {"cpu_s": "5"}])
def test_invalid_limits(kwargs):
    with pytest.raises(InvalidOptionError, match=next(iter(kwargs))):
        Limits(**kwargs)


def test_invalid_sandbox_options(sandbox):
    with pytest.raises(InvalidOptionError, match="workers"):
        Sandbox(workers=0)
    for name in ("../x.py", "/tmp/x.py", "a/../../x.py", "main.py"):
        with pytest.raises(InvalidOptionError, match="relative path"):
            sandbox.run("pass", files={name: ""})
