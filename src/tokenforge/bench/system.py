"""What the benchmark records about the machine: device name, versions, peak memory, a clock.

Peak memory per method: on CUDA, `torch.cuda.max_memory_allocated` after a reset; on CPU, the
process' peak resident set size (VmHWM), reset before each method through /proc/self/clear_refs
where Linux allows it, else the peak since the process started (`memory_kind` says which).
"""

from __future__ import annotations

import platform
import re
import resource
import sys
import time
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        if found:
            return found.group(1).strip()
    return platform.processor() or platform.machine()


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
