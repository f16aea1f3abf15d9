"""Peak memory of a phase of work: ``max_memory_allocated`` on a GPU, resident set size on a CPU.

On a CPU the process's ``ru_maxrss`` never goes down, so two phases cannot be compared
with it. Linux can reset the high-water mark: writing 5 to ``/proc/self/clear_refs``
sets ``VmHWM`` back to the current ``VmRSS``, so each phase gets its own peak. Where
that is not allowed, ``ru_maxrss`` is used (an upper bound) and ``method`` says so.
"""

import gc
import resource
from contextlib import contextmanager
from typing import Iterator, Optional

import torch


def proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """``with PeakMemory(device) as peak: ...``; then ``peak.mb`` (the phase's peak),
    ``peak.above_start_mb`` (its growth above the memory in use at the start) and
    ``peak.method``."""

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.mb = 0.0
        self.start_mb = 0.0
        self.method = ""
        self._hwm: Optional[bool] = None

    @property
    def above_start_mb(self) -> float:
        return self.mb - self.start_mb

    def _current_peak(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self._hwm:
            return proc_status_kb("VmHWM") / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Leave a nested piece of work (evaluation inside training) out of the peak."""
        self.mb = max(self.mb, self._current_peak())
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            elif self._hwm:
                _reset_high_water_mark()

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / 2**20
            self.method = "torch.cuda.max_memory_allocated"
        elif _reset_high_water_mark():
            self._hwm = True
            self.start_mb = proc_status_kb("VmRSS") / 1024
            self.method = "VmHWM after a clear_refs reset (resident set size)"
        else:
            self.start_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            self.method = "ru_maxrss of the process (an upper bound)"
        return self

    def __exit__(self, *exc) -> None:
        self.mb = max(self.mb, self._current_peak())
