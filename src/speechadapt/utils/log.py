"""Rank-aware logging in icefall's layout: ``exp_dir/log/log-NAME-<time>[-rank]``."""

import logging
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Optional, Union

_FORMAT = "%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s"


def setup_logger(
    exp_dir: Optional[Union[str, Path]],
    name: str,
    rank: int = 0,
    world_size: int = 1,
    level: Union[int, str] = logging.INFO,
    use_console: bool = True,
) -> Optional[Path]:
    """Configure the root logger; returns the log file path (None without exp_dir).

    Every rank writes its own file; only rank 0 (or every rank at DEBUG) echoes to the
    console so multi-process runs do not interleave.
    """
    if isinstance(level, str):
        level = getattr(logging, level.upper())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    root.setLevel(level)
    stamp = datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
    fmt = _FORMAT if world_size == 1 else f"%(asctime)s %(levelname)s [rank {rank}] [%(filename)s:%(lineno)d] %(message)s"
    formatter = logging.Formatter(fmt)
    log_path = None
    if exp_dir is not None:
        suffix = f"-{rank}" if world_size > 1 else ""
        log_path = Path(exp_dir) / "log" / f"log-{name}-{stamp}{suffix}"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_path)
        fh.setFormatter(formatter)
        root.addHandler(fh)
    if use_console and (rank == 0 or level <= logging.DEBUG):
        ch = logging.StreamHandler(sys.stderr)
        ch.setFormatter(formatter)
        root.addHandler(ch)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return log_path
