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


def safe_torch_load(path: PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; icefall's AttributeDict/paths allowed.

    Raises FileNotFoundError for a missing file and the unpickler's error (naming the
    offending global) for anything outside the allow-list.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as first_error:
        message = str(first_error)
        if "icefall" not in message and "pathlib" not in message:
            raise
        logging.debug(f"{path}: retrying with icefall's AttributeDict allowed")
    with torch.serialization.safe_globals(_ALLOWED_EXTRA):
        obj = torch.load(path, map_location=map_location, weights_only=True)
    return _to_plain(obj)
