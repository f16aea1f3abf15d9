"""Load icefall Zipformer checkpoints (``pretrained.pt``, ``epoch-N.pt``) safely.

Files are read with ``speechadapt.utils.safe_load.safe_torch_load``: torch's
``weights_only`` unpickler (tensors, storages, numbers, strings, containers) plus
icefall's ``icefall.utils.AttributeDict`` rebuilt as a plain dict (and pathlib paths
as strings); any other pickled class is refused. Only the ``encoder_embed.*``,
``encoder.*`` and (when present in both) ``ctc_output.*`` entries are used, and they
must match the model exactly; otherwise the error lists the differences and names the
preset that would fit the file.
"""

import logging
import os
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from speechadapt.models.zipformer.config import PRESET_NAMES, get_preset
from speechadapt.utils.safe_load import safe_torch_load

PathLike = Union[str, os.PathLike]
ENCODER_PREFIXES = ("encoder_embed.", "encoder.")
CTC_PREFIX = "ctc_output."
_SHOWN = 5  # keys listed per kind of mismatch in error messages


def read_icefall_state_dict(path: PathLike, key: str = "model") -> Dict[str, Tensor]:
    """The state_dict inside an icefall file: ``obj[key]`` ("model" or "model_avg")
    of a checkpoint dict, or the file itself when it is a bare state_dict."""
    obj = safe_torch_load(path, map_location="cpu")
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, found {type(obj).__name__}")
    if key in obj and isinstance(obj[key], dict):
        state_dict = obj[key]
    elif obj and all(isinstance(v, Tensor) for v in obj.values()):
        state_dict = obj
    else:
        raise ValueError(
            f"{path}: no '{key}' state_dict in this file (top-level keys: {sorted(obj)[:10]})"
        )
    # Files saved from a DDP-wrapped model carry a "module." prefix.
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def select_zipformer_keys(state_dict: Dict[str, Tensor],
                          include_ctc: bool = True) -> Dict[str, Tensor]:
    """Keep encoder_embed.*, encoder.* (and ctc_output.* if asked); drop decoder/joiner..."""
    prefixes = ENCODER_PREFIXES + ((CTC_PREFIX,) if include_ctc else ())
    return {k: v for k, v in state_dict.items() if k.startswith(prefixes)}


_PRESET_SHAPES: Dict[str, Dict[str, Tuple[int, ...]]] = {}


def preset_shapes(name: str) -> Dict[str, Tuple[int, ...]]:
    """key -> shape of a preset's encoder_embed.* / encoder.* (built on the meta device)."""
    if name not in _PRESET_SHAPES:
        from speechadapt.models.zipformer.encoder import ZipformerEncoder

        with torch.device("meta"):
            model = ZipformerEncoder(get_preset(name))
        _PRESET_SHAPES[name] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return _PRESET_SHAPES[name]


def infer_preset(state_dict: Dict[str, Tensor]) -> Optional[str]:
    """Name of the preset whose encoder keys and shapes equal the file's, else None."""
    shapes = {k: tuple(v.shape) for k, v in select_zipformer_keys(state_dict, False).items()}
    for name in PRESET_NAMES:
        if shapes == preset_shapes(name):
            return name
    return None


def diff_state_dicts(expected: Dict[str, Tuple[int, ...]],
                     found: Dict[str, Tuple[int, ...]]) -> Tuple[List[str], List[str], List[str]]:
    """(missing keys, unexpected keys, 'key: file shape vs model shape' lines)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        f"{k}: file {list(found[k])} vs model {list(expected[k])}"
        for k in sorted(set(expected) & set(found)) if found[k] != expected[k]
    ]
    return missing, unexpected, mismatched


def _describe(kind: str, items: List[str]) -> str:
    shown = "\n    ".join(items[:_SHOWN])
    more = f"\n    ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return f"  {kind} ({len(items)}):\n    {shown}{more}"


def mismatch_message(path: PathLike, model_shapes: Dict[str, Tuple[int, ...]],
                     file_state: Dict[str, Tensor]) -> Optional[str]:
    """A readable report of how the file differs from the model, or None if it fits."""
    file_shapes = {k: tuple(v.shape) for k, v in file_state.items()}
    missing, unexpected, mismatched = diff_state_dicts(model_shapes, file_shapes)
    if not (missing or unexpected or mismatched):
        return None
    parts = [f"{path}: the checkpoint does not fit this Zipformer model"]
    for kind, items in (("missing in file", missing), ("unexpected in file", unexpected),
                        ("shape mismatches", mismatched)):
        if items:
            parts.append(_describe(kind, items))
    preset = infer_preset(file_state)
    if preset is not None:
        parts.append(f"  the file's encoder matches the '{preset}' preset: build the model "
                     f"with get_preset('{preset}')")
    else:
        parts.append(f"  no preset ({', '.join(PRESET_NAMES)}) matches the file's encoder")
    return "\n".join(parts)


def load_icefall_checkpoint(path: PathLike, model: nn.Module, key: str = "model") -> dict:
    """Load an icefall checkpoint's Zipformer weights into ``model`` strictly.

    ``model``: a ZipformerEncoder, a ZipformerCtc, or any module whose state_dict is
    encoder_embed.* + encoder.* (+ ctc_output.*). A model with a CTC head loads the
    file's ``ctc_output.*`` when the file has one; otherwise the head keeps its
    initial values (logged, and reported as ``ctc_loaded=False``).
    Returns {"num_tensors", "ctc_loaded", "preset", "ignored_keys"}.
    Raises ValueError (listing missing/unexpected/mis-shaped keys and the preset that
    fits the file) when the file does not fit, and pickle.UnpicklingError for files
    that pickle anything beyond tensors, containers and icefall's AttributeDict.
    """
    file_state = read_icefall_state_dict(path, key=key)
    model_state = model.state_dict()
    model_has_ctc = any(k.startswith(CTC_PREFIX) for k in model_state)
    file_has_ctc = any(k.startswith(CTC_PREFIX) for k in file_state)
    load_ctc = model_has_ctc and file_has_ctc
    selected = select_zipformer_keys(file_state, include_ctc=load_ctc)
    expected = {k: tuple(v.shape) for k, v in model_state.items()
                if load_ctc or not k.startswith(CTC_PREFIX)}
    message = mismatch_message(path, expected, selected)
    if message is not None:
        raise ValueError(message)
    result = model.load_state_dict(selected, strict=False)
    not_loaded = [k for k in result.missing_keys if load_ctc or not k.startswith(CTC_PREFIX)]
    if not_loaded or result.unexpected_keys:  # defensive: the diff above covers these
        raise ValueError(f"{path}: load left {not_loaded[:_SHOWN]} / "
                         f"{result.unexpected_keys[:_SHOWN]} unmatched")
    if model_has_ctc and not file_has_ctc:
        logging.warning(f"{path} has no ctc_output.*: the CTC head keeps its initial values")
    return {
        "num_tensors": len(selected),
        "ctc_loaded": load_ctc,
        "preset": infer_preset(file_state),
        "ignored_keys": len(file_state) - len(selected),
    }
