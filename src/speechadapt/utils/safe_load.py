"""Load checkpoints without executing arbitrary pickled code.

Our own files hold only tensors, numbers, strings, lists and dicts, so plain
``torch.load(weights_only=True)`` reads them. icefall's files also pickle
``icefall.utils.AttributeDict`` (a dict subclass) and ``pathlib`` paths inside
``params``; for those we retry with an allow-list that maps icefall's qualified name
to ``dict`` and admits the pathlib path classes (turned into strings after loading).
Nothing else is ever allowed.
"""

import logging
import os
import pathlib
import pickle
import re
from typing import Any, Union

import torch

PathLike = Union[str, os.PathLike]

# icefall's AttributeDict is rebuilt as a plain dict (the restricted unpickler
# only fills real dicts), without importing icefall.
_ALLOWED_EXTRA = [
    (dict, "icefall.utils.AttributeDict"),
    pathlib.PosixPath,
    pathlib.WindowsPath,
    pathlib.PurePosixPath,
    pathlib.PureWindowsPath,
]


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_plain(v) for v in value)
    if isinstance(value, pathlib.PurePath):
        return str(value)
    return value


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A file that pickles something other than tensors and plain containers."""


class CorruptCheckpointError(ValueError):
    """An empty, truncated or otherwise unreadable checkpoint file."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def _refused(path: str, error: BaseException) -> UnsafeCheckpointError:
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    what = f"the class {found.group(1)}" if found else "objects"
    return UnsafeCheckpointError(
        f"{path}: refused: the file pickles {what}, not only tensors, numbers, strings, lists and dicts. "
        f"Checkpoints written by this project or by icefall load; this one does not, and it is never "
        f"loaded with weights_only=False (that would run code from the file)")


def _corrupt(path: str, error: BaseException) -> CorruptCheckpointError:
    size = os.path.getsize(path)
    return CorruptCheckpointError(
        f"{path} ({size} bytes) is not a readable checkpoint: truncated, corrupt or not written by torch.save "
        f"({type(error).__name__}: {_first_line(error)})")


def safe_torch_load(path: PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; icefall's AttributeDict/paths allowed.

    A missing file is a FileNotFoundError, an empty or damaged one a
    :class:`CorruptCheckpointError`, one that pickles any other class an
    :class:`UnsafeCheckpointError`; each message names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise CorruptCheckpointError(f"{path} is empty (an interrupted copy or save?)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as first_error:
        message = str(first_error)
        if "icefall" not in message and "pathlib" not in message:
            raise _refused(path, first_error) from None
        logging.debug(f"{path}: retrying with icefall's AttributeDict allowed")
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError, OSError) as e:
        raise _corrupt(path, e) from None
    try:
        with torch.serialization.safe_globals(_ALLOWED_EXTRA):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refused(path, e) from None
    return _to_plain(obj)
