"""What the benchmark records about the machine: device name, versions, peak memory, a clock,
and how busy the machine was while it timed.

Peak memory per method (the runner's memory pass: one generation per method, in turn): on CUDA,
`torch.cuda.max_memory_allocated` after a reset; on CPU, the process' peak resident set size
(VmHWM), reset before each method through /proc/self/clear_refs where Linux allows it, else the
peak since the process started (`memory_kind` says which).

Machine load: the 1-minute load average before and after the timed part, and this process's CPU
time ÷ wall time over it (`MachineLoad`); `MachineLoad.warnings()` applies `BUSY_RULE`.
"""

from __future__ import annotations

import math
import os
import platform
import re
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tokenforge.models.load import device_name

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
MIN_CPU_SHARE = 0.8  # a CPU run below this CPU ÷ wall waited for a core over a fifth of the time
LOAD_MARGIN = 0.5  # threads of other load tolerated beyond the free cores (load averages jitter)
BUSY_RULE = (
    "busy when (a) the other processes' load, i.e. the higher of the 1-minute load averages "
    "before and after the timed part minus this process's own average busy threads (CPU ÷ "
    "wall), exceeds the cores left to them (usable cores minus the threads this run uses: the "
    f"torch threads on a CPU run, 1 on a GPU run) by more than {LOAD_MARGIN}, or (b) on a CPU "
    f"run, CPU ÷ wall is below {MIN_CPU_SHARE}: a CPU decode loop keeps at least one core "
    "busy, so the process waited for a core during more than a fifth of the timed part. The "
    "1-minute load average lags (a short run mostly reflects the minute before it) and, inside "
    "a container, counts the host's processes.")


def versions() -> dict[str, str]:
    import transformers

    import tokenforge

    return {"tokenforge": tokenforge.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def environment(device: torch.device, dtype: torch.dtype) -> dict:
    return {"device": device.type, "device_name": device_name(device),
            "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
            "platform": platform.platform(), "versions": versions()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn, *args):
    """(fn(*args), seconds), the device synchronised on both sides."""
    synchronize(device)
    start = time.perf_counter()
    value = fn(*args)
    synchronize(device)
    return value, time.perf_counter() - start


class PeakMemory:
    """reset() before a method, megabytes() after it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "rss_peak"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            _CLEAR_REFS.write_text("5")  # Linux: reset the peak RSS to the current RSS
        except OSError:
            self.kind = "rss_peak_since_start"

    def megabytes(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if _STATUS.exists():
            found = re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text())
            if found:
                return int(found.group(1)) / 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = _CPU_MAX.read_text().split()
        if quota != "max":
            return max(1, min(cores or 1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores or 1


def load_average() -> float | None:
    """The 1-minute load average, or None where the system has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


@dataclass(frozen=True)
class Snapshot:
    load: float | None  # 1-minute load average
    cpu_s: float  # this process's CPU time, every thread
    wall_s: float

    @classmethod
    def now(cls) -> Snapshot:
        return cls(load_average(), time.process_time(), time.perf_counter())


@dataclass(frozen=True)
class MachineLoad:
    """How busy the machine was during the timed part (see BUSY_RULE)."""

    device: str  # "cpu", "cuda", ...
    cores: int  # usable by this process
    threads: int  # this run's busy threads: torch threads on the CPU, 1 on a GPU
    load_before: float | None
    load_after: float | None
    cpu_s: float
    wall_s: float

    @classmethod
    def between(cls, before: Snapshot, after: Snapshot, device: torch.device) -> MachineLoad:
        threads = torch.get_num_threads() if device.type == "cpu" else 1
        return cls(device.type, usable_cores(), threads, before.load, after.load,
                   after.cpu_s - before.cpu_s, after.wall_s - before.wall_s)

    @property
    def cpu_per_wall(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def other_load(self) -> float | None:
        """Other processes' average runnable threads (estimated; None without a load average)."""
        loads = [x for x in (self.load_before, self.load_after) if x is not None]
        return max(0.0, max(loads) - self.cpu_per_wall) if loads else None

    def warnings(self) -> list[str]:
        """Why the machine counts as busy under BUSY_RULE (empty when it does not)."""
        found = []
        spare = max(0, self.cores - self.threads)
        if self.other_load is not None and self.other_load > spare + LOAD_MARGIN:
            found.append(f"other processes kept about {self.other_load:.1f} threads busy, over "
                         f"the {spare} core(s) this run left free + {LOAD_MARGIN} "
                         f"({self.cores} usable, {self.threads} used)")
        if self.device == "cpu" and self.cpu_per_wall < MIN_CPU_SHARE:
            found.append(f"this process ran {self.cpu_per_wall:.2f} s of CPU per second of wall "
                         f"time (below {MIN_CPU_SHARE}): it waited for a core")
        return found

    def as_dict(self) -> dict:
        warnings = self.warnings()
        return {"device": self.device, "cores": self.cores, "threads": self.threads,
                "load_before": self.load_before, "load_after": self.load_after,
                "cpu_s": self.cpu_s, "wall_s": self.wall_s, "cpu_per_wall": self.cpu_per_wall,
                "other_load": self.other_load, "busy": bool(warnings), "warnings": warnings,
                "rule": BUSY_RULE}
