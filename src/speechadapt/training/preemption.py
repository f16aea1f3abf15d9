"""Preemption: a signal makes every rank finish its step, save, and exit with a status
the scheduler can requeue on.

Slurm (``#SBATCH --signal=USR1@300``) and most clusters announce the end of a job with
SIGUSR1 or SIGTERM. :class:`PreemptionGuard` catches them in every rank (the handler only
sets a flag). The loop reads the flag in the all-reduce it already does for each batch
(the normaliser and the non-finite check), so all ranks agree on the step after which
they stop, and no extra collective runs. The loop then writes ``checkpoint-B.pt``
atomically and raises :class:`Preempted`; :func:`speechadapt.training.dist.launch` turns
that into exit status :data:`PREEMPTED_EXIT_CODE`. The same command with
``--start-epoch auto`` resumes from that checkpoint, bit-exactly.

Under torchrun a worker's status does not reach the shell (torchrun exits 1 on any
failed worker), so rank 0 also writes a marker file when ``$SPEECHADAPT_PREEMPT_MARKER``
names one: ``tools/slurm_launch.sh`` sets it and exits with the same status.
"""

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

from speechadapt.utils.io import atomic_write_text

# EX_TEMPFAIL of sysexits.h: "try again later", distinct from a crash (1) or a kill (128+n).
PREEMPTED_EXIT_CODE = 75
MARKER_ENV = "SPEECHADAPT_PREEMPT_MARKER"
DEFAULT_SIGNALS = ("SIGUSR1", "SIGTERM")


class Preempted(Exception):
    """Training stopped on a signal after saving ``checkpoint``."""

    def __init__(self, checkpoint: Path, signal_name: str):
        super().__init__(f"preempted by {signal_name}: saved {checkpoint}; rerun the same command "
                         f"(with --start-epoch auto) to resume")
        self.checkpoint = Path(checkpoint)
        self.signal_name = signal_name


def signal_numbers(names: Sequence[str]) -> Dict[str, int]:
    """``{"SIGUSR1": 10, ...}``; an unknown name is an error that names it."""
    numbers = {}
    for name in names:
        full = name if name.upper().startswith("SIG") else f"SIG{name}"
        number = getattr(signal, full.upper(), None)
        if not isinstance(number, signal.Signals):
            raise ValueError(f"--preemption-signals: unknown signal {name!r}")
        numbers[full.upper()] = int(number)
    return numbers


class PreemptionGuard:
    """Signal handlers that record the first preemption signal; restored by :meth:`close`."""

    def __init__(self, names: Sequence[str] = DEFAULT_SIGNALS):
        self.numbers = signal_numbers(names)
        self.received: Optional[str] = None
        self._previous: Dict[int, object] = {}

    def install(self) -> "PreemptionGuard":
        for name, number in self.numbers.items():
            try:
                self._previous[number] = signal.signal(number, self._handle)
            except ValueError:  # not the main thread (a notebook's worker thread): no handlers
                logging.warning(f"cannot handle {name} outside the main thread: preemption is off")
                self.close()
                break
        return self

    def _handle(self, number: int, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(number).name

    @property
    def requested(self) -> bool:
        return self.received is not None

    def close(self) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()


def write_marker(checkpoint: Path, signal_name: str, batch: int) -> Optional[Path]:
    """Tell a launcher that this run was preempted (rank 0; when the launcher asked)."""
    path = os.environ.get(MARKER_ENV)
    if not path:
        return None
    record = {"checkpoint": str(checkpoint), "signal": signal_name, "batch_idx_train": batch,
              "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_text(json.dumps(record) + "\n", path)
    return Path(path)
