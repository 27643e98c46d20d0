"""Run untrusted, model-generated Python in a contained subprocess.

Design. Every run gets a fresh temporary folder with two halves: `work/` (the sandbox folder: the
child's cwd, HOME and TMPDIR, where `main.py` and the given files go) and `host/` (the bootstrap
script and its config, outside the child's reach for writing). The child is
`python -I -B host/bootstrap.py host/config.json <report fd>`: isolated mode (no PYTHON* variables,
no user site folder, no cwd on sys.path; site-packages stay importable, so pytest can run inside,
best with PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 set in os.environ: some plugins open sockets at import),
no bytecode writes, a scrubbed environment (PATH, LANG, HOME, TMPDIR), stdin from /dev/null, its
own session (process group). Before any user code runs, the bootstrap

- sets rlimits: CPU time (`Limits.cpu_s`, default 5 s), address space (`Limits.memory_mb`, default
  1024 MB), file size (16 MiB), no core dumps, and, for a non-root user, RLIMIT_NPROC a little above
  the user's current task count (root ignores RLIMIT_NPROC, so it is a backstop, not the defence);
- installs a `sys.addaudithook` hook that raises `SandboxViolation` (a PermissionError) on network
  use (`socket.*` events except creating AF_UNIX sockets, which asyncio's self-pipe needs), process
  creation (`os.system`, `os.exec*`, `os.spawn*`, `os.posix_spawn*`, `os.fork`, `os.forkpty`,
  `subprocess.Popen`, importing `_posixsubprocess`, whose `fork_exec` raises no event, is made
  unreachable), signalling processes (`os.kill`, `os.killpg`), native code (`ctypes.*` events,
  importing `ctypes`/`_ctypes`), tampering (`resource.setrlimit`/`prlimit`, `sys.settrace`,
  `sys.setprofile`, `sys.addaudithook`, `sys.remote_exec`, opening `/proc/*/fd/*` or
  `/proc/*/mem`), and writes outside `work/`: write-mode `open`/`os.open`, `os.remove`, `rename`,
  `rmdir`, `mkdir`, `symlink`, `link`, `chmod`, `chown`, `truncate`, `utime`, `shutil.*`, and
  opening a directory outside `work/` (a handle for `dir_fd=` writes). Paths are resolved with
  symlinks (and `dir_fd`) before the check. Reading files elsewhere stays allowed (imports need it).

Reporting. The first denial, a top-level exception and each test outcome travel to the host as
lines on an inherited pipe, each with a sequence number and a keyed BLAKE2 MAC; the key comes in
the config file, which the bootstrap deletes before user code runs. Printing, writing to the
pipe's fd or catching the `SandboxViolation` therefore cannot forge or erase a result: a program
that catches the denial is still reported "blocked". The harness looks builtins up in a private
copy, so patching `builtins` does not change how tests are judged. The host reads stdout, stderr
and the report pipe with a selector (no deadlock), keeps `Limits.output_bytes` (default 64 KiB) of
each stream, kills the whole process group with SIGKILL after `Limits.wall_s` (default 10 s) or
when the run ends, and removes the temporary folder. `run_tests` times each test with
SIGALRM/setitimer (`Limits.per_test_s`, default 2 s).

Limits of this design, plainly: audit hooks plus rlimits are containment for buggy or careless
generated code (infinite loops, fork bombs, memory hogs, stray writes, network calls), NOT a
security boundary against a determined adversary. Python's documentation says audit hooks are not a
sandbox: code in the same interpreter can monkeypatch `os`/`os.path` (which the hook's path checks
use), walk frames to the harness's MAC key, race a symlink between check and use, or load a C
extension (only ctypes is blocked); some calls raise no audit event at all (`os.mkfifo`,
`os.mknod`); disk use is capped per file, not in total. For hostile code, run tokenforge inside a
container or VM with no network and a read-only filesystem.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import PurePosixPath

from tokenforge.errors import InvalidOptionError

FILE_BYTES = 16 * 2**20  # RLIMIT_FSIZE: the largest file the child may write
_REPORT_BYTES = 8 * 2**20  # most of the report pipe kept (a few hundred bytes per test)
_DRAIN_S = 2.0  # reading what is left in the pipes once the process group is dead
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}

# The child's side, written to host/bootstrap.py, run as `python -I -B bootstrap.py config.json FD`
# (FD: the write end of the report pipe).
_BOOTSTRAP = r'''
"""tokenforge sandbox bootstrap: rlimits, an audit hook, then the user code (tokenforge.tasks.sandbox)."""
import builtins
import hashlib
import itertools
import json
import os
import re
import resource
import signal
import subprocess
import sys
import traceback
import types

# Module attributes can be patched by user code, these references cannot; and functions defined
# from here on look builtins up in a private copy, so patching builtins does not change how the
# harness judges or reports.
_write, _setitimer, _set_handler = os.write, signal.setitimer, signal.signal
__builtins__ = dict(vars(builtins))

NETWORK, PROCESS, SIGNAL = "network access", "process creation", "signalling processes"
NATIVE, TAMPER, FILES = "native code", "sandbox tampering", "file write outside the sandbox"
EVENTS = {"os.system": PROCESS, "os.exec": PROCESS, "os.spawn": PROCESS, "os.posix_spawn": PROCESS,
          "os.fork": PROCESS, "os.forkpty": PROCESS, "subprocess.Popen": PROCESS,
          "os.kill": SIGNAL, "os.killpg": SIGNAL, "resource.setrlimit": TAMPER,
          "resource.prlimit": TAMPER, "sys.settrace": TAMPER, "sys.setprofile": TAMPER,
          "sys.addaudithook": TAMPER, "sys.remote_exec": TAMPER}
IMPORTS = {"ctypes": NATIVE, "_ctypes": NATIVE, "_posixsubprocess": PROCESS}
# event -> (path argument, its dir_fd argument or None) for every path the call writes
PATH_EVENTS = {
    "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),), "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),), "os.utime": ((0, 3),), "os.truncate": ((0, None),),
    "os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)), "os.symlink": ((1, 2),),
    "os.setxattr": ((0, None),), "os.removexattr": ((0, None),),
    "shutil.copyfile": ((1, None),), "shutil.copymode": ((1, None),),
    "shutil.copystat": ((1, None),), "shutil.copytree": ((1, None),),
    "shutil.move": ((0, None), (1, None)), "shutil.rmtree": ((0, 1),),
    "shutil.chown": ((0, None),), "shutil.make_archive": ((0, None),),
    "shutil.unpack_archive": ((1, None),)}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
PROC_HANDLES = re.compile(r"^/proc/[^/]+(/task/[^/]+)?/(fd|mem|map_files)(/|$)")


class SandboxViolation(PermissionError):
    """Raised by the audit hook; the first one is also reported to the host."""


class TestTimeout(BaseException):
    """A test ran past its per-test time (BaseException: `except Exception` does not swallow it)."""


def clean(text, size=300):
    return " ".join(str.split(text))[:size]


def describe(exc):
    try:
        message = clean(str(exc))
    except BaseException:
        message = ""
    name = clean(type(exc).__name__, 80)
    return f"{name}: {message}" if message else name


def reporter(fd, key):
    """Writes one MAC'd line per record to the report pipe, numbered by a thread-safe counter."""
    blake2b, numbers = hashlib.blake2b, itertools.count()

    def report(*fields):
        body = "\t".join([str(next(numbers)), *fields]).encode("utf-8", "backslashreplace")
        mac = blake2b(body, key=key, digest_size=16).hexdigest().encode()
        _write(fd, body + b"\t" + mac + b"\n")
    return report


def user_tasks(uid):
    """Processes and threads of `uid` now (RLIMIT_NPROC counts all of them)."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(status["Uid"].split()[0]) == uid:
            total += int(status["Threads"])
    return total


def set_limits(cfg):
    def limit(which, soft, hard):
        cap = resource.getrlimit(which)[1]
        if cap != resource.RLIM_INFINITY:
            soft, hard = min(soft, cap), min(hard, cap)
        resource.setrlimit(which, (soft, hard))
    # SIGXCPU at the soft limit, SIGKILL a second later if the program handles SIGXCPU
    limit(resource.RLIMIT_CPU, cfg["cpu_s"], cfg["cpu_s"] + 1)
    limit(resource.RLIMIT_AS, cfg["memory_bytes"], cfg["memory_bytes"])
    limit(resource.RLIMIT_FSIZE, cfg["file_bytes"], cfg["file_bytes"])
    limit(resource.RLIMIT_CORE, 0, 0)
    if os.getuid() != 0:
        tasks = user_tasks(os.getuid()) + 64
        limit(resource.RLIMIT_NPROC, tasks, tasks)


def disarm_fork_exec():
    """subprocess is imported already; `_posixsubprocess.fork_exec` raises no audit event, so it
    leaves sys.modules (a fresh import is then an audited, blocked event) and subprocess."""
    sys.modules.pop("_posixsubprocess", None)
    for name in ("_posixsubprocess", "_fork_exec"):
        if hasattr(subprocess, name):
            setattr(subprocess, name, None)


def make_hook(work, report):
    denied = []

    def resolve(path, dir_fd=None):
        if isinstance(path, int):
            path = os.readlink(f"/proc/self/fd/{path}")
            if not path.startswith("/"):  # a pipe or socket: nothing on disk
                return work
        path = os.fsdecode(path)
        if dir_fd is not None and dir_fd >= 0 and not path.startswith("/"):  # < 0: the cwd
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        return os.path.realpath(path)

    def outside(path, dir_fd=None):
        real = resolve(path, dir_fd)
        return real != work and not real.startswith(work + os.sep)

    def check_open(path, mode, flags):
        if isinstance(path, int):
            return None
        if PROC_HANDLES.match(os.path.abspath(os.fsdecode(path))):
            return TAMPER
        writes = (flags or 0) & WRITE_FLAGS or any(c in (mode or "") for c in "wax+")
        if (writes or os.path.isdir(path)) and outside(path) and resolve(path) != os.devnull:
            return FILES
        return None

    def check_paths(event, args):
        for index, dir_fd in PATH_EVENTS[event]:
            if outside(args[index], None if dir_fd is None else args[dir_fd]):
                return FILES
        return None

    def check_socket(event, args):
        return None if event == "socket.__new__" and args[1] == 1 else NETWORK  # 1: AF_UNIX

    def hook(event, args):
        what = EVENTS.get(event)
        if what is None:
            if event == "open":
                what = check_open(*args[:3])
            elif event in PATH_EVENTS:
                what = check_paths(event, args)
            elif event == "import":
                what, event = IMPORTS.get(args[0]), f"import {args[0]}"
            elif event.startswith("socket."):
                what = check_socket(event, args)
            elif event.startswith("ctypes."):
                what = NATIVE
            if what is None:
                return
        if not denied:
            denied.append(event)
            report("blocked", what, event)
        raise SandboxViolation(f"sandbox: {what} denied ({event})")
    return hook


def new_module(name, path):
    module = types.ModuleType(name)
    module.__file__ = path
    sys.modules[name] = module
    return module


def load(module):
    with open(module.__file__, encoding="utf-8") as f:
        exec(compile(f.read(), module.__file__, "exec"), module.__dict__)


def run_script(cfg, report):
    """Run main.py as __main__; an uncaught exception is reported, printed and exits 1."""
    module = new_module("__main__", os.path.join(cfg["work"], "main.py"))
    sys.argv = ["main.py", *cfg["argv"]]
    sys.path.insert(0, cfg["work"])
    try:
        load(module)
    except SystemExit:
        raise
    except BaseException as exc:
        report("exception", "memory" if isinstance(exc, MemoryError) else "error", describe(exc))
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        sys.exit(1)


def run_test(source, namespace, seconds):
    def on_alarm(signum, frame):
        raise TestTimeout

    _set_handler(signal.SIGALRM, on_alarm)
    try:
        try:
            _setitimer(signal.ITIMER_REAL, seconds)
            exec(compile(source, "<test>", "exec"), namespace)
        finally:
            _setitimer(signal.ITIMER_REAL, 0)
    except TestTimeout:
        return "timeout", ""
    except AssertionError as exc:
        return "fail", describe(exc)
    except BaseException as exc:
        return "error", describe(exc)
    return "pass", ""


def run_tests(cfg, report):
    """Define the program once, then run every test in its namespace; os._exit at the end so that
    threads or atexit handlers of the program cannot change the outcome."""
    streams = (sys.stdout, sys.stderr)
    module = new_module("solution", os.path.join(cfg["work"], "solution.py"))
    try:
        load(module)
    except BaseException as exc:
        report("exception", "memory" if isinstance(exc, MemoryError) else "error", describe(exc))
        os._exit(1)
    for i, test in enumerate(cfg["tests"]):
        report("test", str(i), *run_test(test, module.__dict__, cfg["per_test_s"]))
    report("done")
    for stream in streams:
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(0)


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        cfg = json.load(f)
    os.remove(sys.argv[1])  # the MAC key is in it
    set_limits(cfg)
    report = reporter(int(sys.argv[2]), bytes.fromhex(cfg["key"]))
    disarm_fork_exec()
    sys.addaudithook(make_hook(cfg["work"], report))
    (run_script if cfg["mode"] == "run" else run_tests)(cfg, report)


main()
'''


@dataclass(frozen=True)
class Limits:
    """Per-run limits of the sandbox (defaults in the field list)."""

    cpu_s: float = 5.0  # CPU time of the child process (RLIMIT_CPU, rounded up to whole seconds)
    wall_s: float = 10.0  # wall time, then SIGKILL to the whole process group
    memory_mb: int = 1024  # address space (RLIMIT_AS)
    per_test_s: float = 2.0  # per test inside run_tests (SIGALRM/setitimer in the child)
    output_bytes: int = 65536  # stdout and stderr kept, each

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidOptionError(f"Limits({f.name}={value!r}) is not valid: pass a number "
                                         f"> 0 (the default is {f.name}={f.default!r})")


@dataclass
class RunResult:
    """One process run."""

    status: str  # "ok", "error", "timeout", "memory" or "blocked"
    reason: str  # one line, "" when ok
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float


@dataclass
class TestsResult:
    """run_tests: one process, many tests."""

    __test__ = False  # not a pytest test class

    passed: int
    total: int
    outcomes: list[str]  # per test: "pass", "fail: ...", "error: ...", "timeout" or "not run"
    status: str  # as RunResult.status, for the whole process
    reason: str  # why the process failed, "" when ok
    wall_s: float

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 0.0


@dataclass
class _Exit:
    """What the host saw of one child: its exit, its streams and its verified report records."""

    returncode: int
    stdout: str
    stderr: str
    records: list[list[str]]
    wall_timeout: bool
    cpu_timeout: bool
    wall_s: float

    def first(self, kind: str) -> list[str] | None:
        return next((r[1:] for r in self.records if r[0] == kind), None)


class Sandbox:
    """Runs programs under `limits`, `workers` processes at a time in run_many."""

    def __init__(self, limits: Limits = Limits(), workers: int = 2):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InvalidOptionError(f"Sandbox(workers={workers!r}) is not valid: pass an int >= 1")
        self.limits, self.workers = limits, workers

    def run(self, source: str, files: dict[str, str] | None = None,
            args: list[str] | None = None) -> RunResult:
        """Run `source` as the main script (main.py in the sandbox folder, `files` beside it:
        relative paths without '..')."""
        files = {**_checked_files(files or {}), "main.py": source}
        seen = self._execute({"mode": "run", "argv": list(args or [])}, files)
        status, reason = self._verdict(seen)
        if status == "ok" and seen.returncode != 0:
            status, reason = "error", f"error: exit code {seen.returncode}"
        return RunResult(status, reason, seen.returncode, seen.stdout, seen.stderr, seen.wall_s)

    def run_tests(self, program: str, tests: list[str]) -> TestsResult:
        """Define `program` once in a fresh module namespace, then run each test (a statement or
        block, usually an assert) in that namespace with its own `per_test_s` timeout. Outcomes
        come back on the MAC'd report pipe, so what the program prints cannot change them."""
        seen = self._execute({"mode": "tests", "tests": list(tests)}, {"solution.py": program})
        outcomes = _outcomes(seen.records, len(tests))
        status, reason = self._verdict(seen)
        if status == "ok" and seen.first("done") is None:
            status, reason = "error", f"error: exited early (exit code {seen.returncode})"
        return TestsResult(outcomes.count("pass"), len(tests), outcomes, status, reason, seen.wall_s)

    def run_many(self, jobs: list[tuple[str, list[str]]], progress: bool = False) -> list[TestsResult]:
        """run_tests for each (program, tests) job, `workers` at a time, in order."""
        from tqdm import tqdm

        with ThreadPoolExecutor(self.workers) as pool, \
                tqdm(total=len(jobs), desc="sandbox", disable=not progress) as bar:
            results = []
            for result in pool.map(lambda job: self.run_tests(*job), jobs):
                results.append(result)
                bar.update(1)
        return results

    def _verdict(self, seen: _Exit) -> tuple[str, str]:
        """Status and reason of a process: blocked > timeout > memory > error > ok."""
        limits, blocked, exception = self.limits, seen.first("blocked"), seen.first("exception")
        if blocked:
            return "blocked", f"blocked: {blocked[0]} ({blocked[1]})"
        if seen.wall_timeout:
            return "timeout", f"timeout: wall time {limits.wall_s}s exceeded"
        if seen.cpu_timeout:
            return "timeout", f"timeout: CPU time {limits.cpu_s}s exceeded"
        if exception and exception[0] == "memory":
            return "memory", f"memory: {exception[1]} (limit {limits.memory_mb} MB)"
        if exception:
            return "error", f"error: {exception[1]}"
        if seen.returncode == -signal.SIGKILL:  # not ours, not the CPU limit: the OOM killer
            return "memory", f"memory: killed by SIGKILL (limit {limits.memory_mb} MB)"
        if seen.returncode == -signal.SIGXFSZ:
            return "error", f"error: file size limit ({FILE_BYTES // 2**20} MiB) exceeded"
        if seen.returncode < 0:
            return "error", f"error: killed by signal {-seen.returncode}"
        return "ok", ""

    def _execute(self, config: dict, files: dict[str, str]) -> _Exit:
        """One child in a fresh temporary folder, which is removed afterwards."""
        root = tempfile.mkdtemp(prefix="tokenforge-sandbox-")
        try:
            work, host = os.path.join(root, "work"), os.path.join(root, "host")
            os.mkdir(work)
            os.mkdir(host)
            work = os.path.realpath(work)
            for name, text in files.items():
                _write_text(os.path.join(work, name), text)
            key = secrets.token_bytes(32)
            config = {**config, "work": work, "key": key.hex(), "cpu_s": math.ceil(self.limits.cpu_s),
                      "memory_bytes": self.limits.memory_mb * 2**20, "file_bytes": FILE_BYTES,
                      "per_test_s": self.limits.per_test_s}
            _write_text(os.path.join(host, "bootstrap.py"), _BOOTSTRAP)
            _write_text(os.path.join(host, "config.json"), json.dumps(config))
            report_r, report_w = os.pipe()
            try:
                return self._spawn(host, work, report_r, report_w, key)
            finally:
                os.close(report_r)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def _spawn(self, host: str, work: str, report_r: int, report_w: int, key: bytes) -> _Exit:
        """Start the child (which inherits `report_w`), collect its output until it exits or runs
        past the wall time, then kill its process group and reap it."""
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", os.path.join(host, "bootstrap.py"),
                 os.path.join(host, "config.json"), str(report_w)],
                cwd=work, env={**_ENV, "HOME": work, "TMPDIR": work}, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(report_w,),
                start_new_session=True)
        finally:
            os.close(report_w)
        assert proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout.fileno(), proc.stderr.fileno()
        caps = {out: self.limits.output_bytes, err: self.limits.output_bytes, report_r: _REPORT_BYTES}
        streams = _Streams(caps)
        try:
            deadline = start + self.limits.wall_s
            streams.pump(deadline)
            wall_timeout = not _exited(proc.pid, deadline)
        finally:
            _kill_group(proc.pid)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            streams.pump(time.monotonic() + _DRAIN_S)
            streams.selector.close()
            proc.stdout.close()
            proc.stderr.close()
        cpu_used = usage.ru_utime + usage.ru_stime
        cpu_timeout = proc.returncode == -signal.SIGXCPU or (
            proc.returncode == -signal.SIGKILL and cpu_used >= math.ceil(self.limits.cpu_s))
        return _Exit(proc.returncode, streams.text(out), streams.text(err),
                     _records(streams.data[report_r], key),
                     wall_timeout, cpu_timeout, time.monotonic() - start)


class _Streams:
    """Reads several pipes at once, keeping at most `caps[fd]` bytes of each."""

    def __init__(self, caps: dict[int, int]):
        self.caps = caps
        self.data = {fd: bytearray() for fd in caps}
        self.dropped = dict.fromkeys(caps, 0)
        self.selector = selectors.DefaultSelector()
        for fd in caps:
            self.selector.register(fd, selectors.EVENT_READ)

    def pump(self, deadline: float) -> None:
        """Read until every pipe is at EOF or the deadline passes."""
        while self.selector.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in self.selector.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    self.selector.unregister(key.fd)
                    continue
                room = self.caps[key.fd] - len(self.data[key.fd])
                self.data[key.fd] += chunk[:max(room, 0)]
                self.dropped[key.fd] += max(len(chunk) - max(room, 0), 0)

    def text(self, fd: int) -> str:
        text = self.data[fd].decode("utf-8", "replace")
        if self.dropped[fd]:
            text += f"\n[sandbox: {self.dropped[fd]} more bytes not kept]"
        return text


def _exited(pid: int, deadline: float) -> bool:
    """Whether the child exits by `deadline`; it is left unreaped (a zombie keeps its process
    group's id from being reused until the group is killed)."""
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _records(data: bytes, key: bytes) -> list[list[str]]:
    """The report lines whose MAC checks out, each sequence number once (no replays)."""
    records: list[list[str]] = []
    seen: set[str] = set()
    for line in data.split(b"\n"):
        body, _, mac = line.rpartition(b"\t")
        expected = hashlib.blake2b(body, key=key, digest_size=16).hexdigest().encode()
        seq, *fields = body.decode("utf-8", "replace").split("\t")
        if hmac.compare_digest(mac, expected) and seq not in seen and fields:
            seen.add(seq)
            records.append(fields)
    return records


def _outcomes(records: list[list[str]], total: int) -> list[str]:
    """Per-test outcomes in order; tests without a record are "not run"."""
    outcomes: list[str] = []
    for kind, *rest in records:
        if kind == "test" and len(rest) == 3 and len(outcomes) < total and rest[0] == str(len(outcomes)):
            category, detail = rest[1], rest[2]
            outcomes.append(f"{category}: {detail}" if detail else category)
    return outcomes + ["not run"] * (total - len(outcomes))


def _checked_files(files: dict[str, str]) -> dict[str, str]:
    for name in files:
        parts = PurePosixPath(name).parts
        if not parts or PurePosixPath(name).is_absolute() or ".." in parts or name == "main.py":
            raise InvalidOptionError(f"sandbox file name {name!r} is not valid: pass a relative "
                                     "path inside the sandbox folder (no '..', not main.py)")
    return files


def _write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
