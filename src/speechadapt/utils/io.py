"""Crash-safe writes: a temp file in the same directory, fsync, then os.replace.

A crash mid-write leaves the previous file untouched (rename is atomic on POSIX), and
the next save of that file removes the temp file the crash left.
"""

import os
import tempfile
from pathlib import Path
from typing import Any, Union

PathLike = Union[str, os.PathLike]


def _atomic(path: PathLike, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A save killed mid-write leaves its temp file behind: the next save of the same
    # file cleans it up.
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    import torch  # here, so the light helpers (and worker processes) do not pay for torch

    return _atomic(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: PathLike) -> Path:
    return _atomic(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_bytes(data: bytes, path: PathLike) -> Path:
    return _atomic(path, lambda f: f.write(data))


def file_fingerprint(path: PathLike, window: int = 1 << 20) -> str:
    """A cheap identity of a (possibly multi-GB) file: its size and a SHA-256 of its
    first and last ``window`` bytes. Retraining a model and saving it again changes it."""
    import hashlib

    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(window))
        if size > window:
            f.seek(max(window, size - window))
            digest.update(f.read(window))
    return f"{size}:{digest.hexdigest()[:16]}"
