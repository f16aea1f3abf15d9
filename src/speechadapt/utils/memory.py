"""Peak memory of a phase of work: ``max_memory_allocated`` on a GPU, resident set size on a CPU.

On a CPU the process's ``ru_maxrss`` never goes down, so two phases cannot be compared
with it; :class:`PeakMemory` samples the resident set size from ``/proc/self/statm``
in a background thread instead (every ``interval_s``), so each phase gets its own peak.
"""

import os
import resource
import threading
import time
from typing import Optional

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float:
    """The current resident set size in MiB (ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class PeakMemory:
    """``with PeakMemory(device) as peak: ...``; then ``peak.mb`` (and ``peak.kind``)."""

    def __init__(self, device="cpu", interval_s: float = 0.005):
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.mb = 0.0
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "rss"
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.mb = max(self.mb, rss_mb())
            time.sleep(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        if self.kind == "rss":
            self.mb = rss_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.kind == "rss":
            self._stop.set()
            self._thread.join()
            self.mb = max(self.mb, rss_mb())
        else:
            torch.cuda.synchronize(self.device)
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
