"""Progress of long loops, on a terminal and in batch jobs.

On a terminal: a tqdm bar. Without one (a cluster job's log file), a log line after
the first item, every ``every_n`` items and whenever ``every_s`` seconds passed since
the last line (checked between items), with throughput, the counted quantities per second (frames, seconds
of audio ...) and, when the total is known, the ETA. Only the main process reports.
"""

import logging
import sys
import time
from typing import Dict, Iterable, Iterator, Optional


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    def __init__(self, iterable: Iterable, desc: str, total: Optional[int] = None, initial: int = 0,
                 enabled: bool = True, every_n: int = 50, every_s: float = 60.0, unit: str = "batch",
                 tty: Optional[bool] = None):
        self.iterable = iterable
        self.desc = desc
        self.total = total
        self.n = initial
        self.enabled = enabled
        self.every_n = max(0, int(every_n))
        self.every_s = float(every_s)
        self.unit = unit
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.counts: Dict[str, float] = {}
        self._start = self._last = time.time()
        self._start_n = initial
        self._bar = None

    def add(self, **amounts: float) -> None:
        """Count quantities of the current item (``frames=...``, ``audio_s=...``)."""
        for key, value in amounts.items():
            self.counts[key] = self.counts.get(key, 0.0) + float(value)

    def __iter__(self) -> Iterator:
        if self.enabled and self.tty:
            from tqdm import tqdm

            self._bar = tqdm(self.iterable, desc=self.desc, total=self.total, initial=self.n, unit=self.unit)
            for item in self._bar:
                self.n += 1
                yield item
            return
        for item in self.iterable:
            self.n += 1  # counts the item being processed, so a line from inside the loop is current
            yield item
            if self.enabled and self._due():
                logging.info(self.line())
                self._last = time.time()

    def _due(self) -> bool:
        first = self.n == self._start_n + 1  # a batch job shows at once that work has started
        return first or (self.every_n > 0 and self.n % self.every_n == 0) or time.time() - self._last >= self.every_s

    def line(self) -> str:
        elapsed = max(time.time() - self._start, 1e-9)
        done = self.n - self._start_n
        position = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{self.desc}: {self.unit} {position}", f"{done / elapsed:.2f} {self.unit}/s"]
        parts += [f"{value / elapsed:,.0f} {key}/s" for key, value in self.counts.items()]
        if self.total and done > 0 and self.n < self.total:
            parts.append(f"ETA {_fmt_duration((self.total - self.n) * elapsed / done)}")
        parts.append(f"elapsed {_fmt_duration(elapsed)}")
        return ", ".join(parts)
