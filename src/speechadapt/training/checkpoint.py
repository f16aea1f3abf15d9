"""Checkpoints in icefall's layout: save, load, find, prune and average.

A file is a dict with icefall's keys: ``model``, ``optimizer``, ``scheduler``,
``grad_scaler``, ``sampler``, ``model_avg`` (running average, float32 on disk),
``batch_idx_train`` and ``params`` (a plain dict: cur_epoch, batch_idx_train,
batch_idx_in_epoch, best/valid losses, rng states, ...); the loop adds
``model_avg_live``, its running average in float64 as it was in memory (with
``params["avg_batch_idx"]``), so a resumed run is bit-exact. Only tensors, numbers,
strings, lists and dicts go in, so ``torch.load(weights_only=True)`` reads them.
Writes are atomic (temp file + fsync + rename). icefall's own files are read through
:func:`speechadapt.utils.safe_load.safe_torch_load`.
"""

import logging
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from speechadapt.utils.io import atomic_save
from speechadapt.utils.safe_load import safe_torch_load

PathLike = Union[str, Path]
StateDict = Dict[str, torch.Tensor]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DDP/FSDP-style wrappers (anything with ``.module``)."""
    while isinstance(model, nn.parallel.DistributedDataParallel) or (
        hasattr(model, "module") and isinstance(getattr(model, "module"), nn.Module)
    ):
        model = model.module
    return model


def model_state_dict(model: nn.Module, trainable_only: bool = False) -> StateDict:
    """The model's state dict; with ``trainable_only`` just the parameters that
    require grad plus every buffer (adapter/LoRA checkpoints)."""
    model = unwrap_model(model)
    state = model.state_dict()
    if not trainable_only:
        return state
    keep = {name for name, p in model.named_parameters() if p.requires_grad}
    keep |= {name for name, _ in model.named_buffers()}
    return {k: v for k, v in state.items() if k in keep}


def check_state_matches(own_shapes: Dict[str, tuple], state: StateDict, partial: bool = False,
                        where: str = "checkpoint") -> List[str]:
    """Every saved key must exist in the model with the same shape; without ``partial`` a
    model key missing from ``state`` is an error too. Returns the missing keys."""
    unexpected = sorted(set(state) - set(own_shapes))
    if unexpected:
        raise KeyError(f"{where} has keys the model lacks: {unexpected[:10]}"
                       + (f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else ""))
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(own_shapes[k])]
    if wrong:
        k = wrong[0]
        raise ValueError(f"shape mismatch for {k}: {where} {tuple(state[k].shape)}, "
                         f"model {tuple(own_shapes[k])} ({len(wrong)} keys differ)")
    missing = sorted(set(own_shapes) - set(state))
    if missing and not partial:
        raise KeyError(f"{where} lacks model keys: {missing[:10]} (a trainable-only file? pass partial=True)")
    return missing


def load_model_state(model: nn.Module, state: StateDict, strict: bool = True, partial: bool = False) -> None:
    """Load ``state`` into ``model``: every saved key must exist with the same shape.
    A ``partial`` (trainable-only) state is merged onto the model; otherwise, with
    ``strict``, a model key missing from the state is an error too."""
    model = unwrap_model(model)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = check_state_matches(own, state, partial or not strict)
    if missing:
        logging.info(f"partial checkpoint: {len(state)} keys loaded, {len(missing)} kept from the model")
    model.load_state_dict(state, strict=False)


def save_checkpoint(
    path: PathLike,
    model: nn.Module,
    params: Dict[str, Any],
    optimizer=None,
    scheduler=None,
    grad_scaler=None,
    sampler_state: Optional[Dict] = None,
    model_avg: Optional[StateDict] = None,
    trainable_only: bool = False,
    extra: Optional[Dict[str, Any]] = None,
    model_state: Optional[StateDict] = None,
    optimizer_state: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write an icefall-style checkpoint atomically (call on rank 0 only); ``extra``
    entries are added as they are (the loop's float64 ``model_avg_live``).
    ``model_state`` / ``optimizer_state``: already gathered states (FSDP) in place of
    the objects' own."""
    if model_state is None:
        model_state = model_state_dict(model, trainable_only)
    if optimizer_state is None and optimizer is not None:
        optimizer_state = optimizer.state_dict()
    checkpoint = {
        "model": model_state,
        "optimizer": optimizer_state,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "grad_scaler": grad_scaler.state_dict() if grad_scaler is not None and grad_scaler.is_enabled() else None,
        "sampler": sampler_state,
        "model_avg": {k: v.float() if v.is_floating_point() else v for k, v in model_avg.items()}
        if model_avg is not None else None,
        "batch_idx_train": int(params.get("batch_idx_train", 0)),
        "params": params,
    }
    checkpoint.update(extra or {})
    path = atomic_save(checkpoint, path)
    logging.info(f"saved checkpoint {path}")
    return path


def load_checkpoint(
    path: PathLike,
    model: Optional[nn.Module] = None,
    optimizer=None,
    scheduler=None,
    grad_scaler=None,
    strict: bool = True,
) -> Dict[str, Any]:
    """Load a checkpoint (ours or icefall's) into the given objects; returns the whole
    dict (``params``, ``model_avg``, ``sampler`` ... for the caller)."""
    checkpoint = safe_torch_load(path)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    if model is not None:
        if "model" not in checkpoint:
            raise KeyError(f"{path}: no 'model' entry (keys: {sorted(checkpoint)[:10]})")
        partial = bool((checkpoint.get("params") or {}).get("trainable_only", False))
        load_model_state(model, checkpoint["model"], strict=strict, partial=partial)
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("grad_scaler", grad_scaler)):
        if obj is None:
            continue
        if checkpoint.get(name) is None:
            logging.warning(f"{path}: no {name} state saved; {name} starts fresh")
            continue
        obj.load_state_dict(checkpoint[name])
    return checkpoint


def update_averaged_model(model_avg: StateDict, model_cur: StateDict, weight_cur: float) -> None:
    """``avg = avg * (1 - w) + cur * w`` on floating-point entries, in place.

    With ``w = period / batch_idx_train`` this keeps the mean over every batch seen so
    far (each snapshot standing for the ``period`` batches it closes)."""
    if not 0.0 < weight_cur <= 1.0:
        raise ValueError(f"averaging weight must be in (0, 1], got {weight_cur}")
    for key, avg in model_avg.items():
        if not avg.is_floating_point():
            continue
        cur = model_cur[key].detach().to(device=avg.device, dtype=avg.dtype)
        avg.mul_(1.0 - weight_cur).add_(cur, alpha=weight_cur)


def _model_entry(path: PathLike, key: str = "model") -> StateDict:
    checkpoint = safe_torch_load(path)
    if not isinstance(checkpoint, dict) or checkpoint.get(key) is None:
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise KeyError(f"{path}: no {key!r} entry (found {found})")
    return checkpoint[key]


def check_same_layout(first: PathLike, first_state: StateDict, other: PathLike, other_state: StateDict) -> None:
    """Averaging needs the same keys and shapes in every file; list the first differences."""
    only_first = sorted(set(first_state) - set(other_state))
    only_other = sorted(set(other_state) - set(first_state))
    shapes = [f"{k}: {tuple(first_state[k].shape)} vs {tuple(other_state[k].shape)}"
              for k in sorted(set(first_state) & set(other_state))
              if tuple(first_state[k].shape) != tuple(other_state[k].shape)]
    if not (only_first or only_other or shapes):
        return
    parts = [f"cannot average {first} with {other}: they hold different models"]
    for label, items in ((f"only in {Path(first).name}", only_first), (f"only in {Path(other).name}", only_other),
                         ("shapes differ", shapes)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{label} ({len(items)}): {', '.join(items[:5])}{more}")
    raise ValueError("; ".join(parts))


def average_checkpoints(filenames: Sequence[PathLike], device: str = "cpu") -> StateDict:
    """Plain mean of the ``model`` entries; integer tensors are taken from the last file."""
    if not filenames:
        raise ValueError("average_checkpoints: no files given")
    n = len(filenames)
    total: StateDict = {}
    dtypes: Dict[str, torch.dtype] = {}
    for i, name in enumerate(filenames):
        state = _model_entry(name)
        dtypes = {k: v.dtype for k, v in state.items()}
        if i == 0:
            total = {k: v.to(device, torch.float64) if v.is_floating_point() else v.to(device)
                     for k, v in state.items()}
            continue
        check_same_layout(filenames[0], total, name, state)
        for k, v in state.items():
            if v.is_floating_point():
                total[k] += v.to(device, torch.float64)
            else:
                total[k] = v.to(device)
    return {k: (v / n).to(dtypes[k]) if v.is_floating_point() else v for k, v in total.items()}


def average_checkpoints_with_averaged_model(filename_start: PathLike, filename_end: PathLike,
                                            device: str = "cpu") -> StateDict:
    """``(avg_end * b_end - avg_start * b_start) / (b_end - b_start)`` from the files'
    ``model_avg`` and ``batch_idx_train``: the mean model over the batches between them."""
    start = safe_torch_load(filename_start)
    end = safe_torch_load(filename_end)
    for name, ckpt in ((filename_start, start), (filename_end, end)):
        if not isinstance(ckpt, dict) or ckpt.get("model_avg") is None or "batch_idx_train" not in ckpt:
            raise KeyError(f"{name}: no 'model_avg' entry (run with --average-period > 0)")
    check_same_layout(filename_start, start["model_avg"], filename_end, end["model_avg"])
    b_start, b_end = int(start["batch_idx_train"]), int(end["batch_idx_train"])
    if b_end <= b_start:
        raise ValueError(f"{filename_end} (batch {b_end}) must come after {filename_start} (batch {b_start})")
    avg_start, avg_end = start["model_avg"], end["model_avg"]
    out: StateDict = {}
    for key, v_end in avg_end.items():
        if not v_end.is_floating_point():
            out[key] = v_end.to(device)
            continue
        v_start = avg_start[key].to(device, torch.float64)
        mean = (v_end.to(device, torch.float64) * b_end - v_start * b_start) / (b_end - b_start)
        out[key] = mean.to(v_end.dtype)
    return out


def find_checkpoints(exp_dir: PathLike, iteration: int = 0) -> List[Path]:
    """``checkpoint-B.pt`` files, newest (largest B) first; with ``iteration > 0`` only
    those with ``B <= iteration``."""
    pattern = re.compile(r"^checkpoint-(\d+)\.pt$")
    found = []
    for path in Path(exp_dir).glob("checkpoint-*.pt"):
        m = pattern.match(path.name)
        if m and (iteration <= 0 or int(m.group(1)) <= iteration):
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found, reverse=True)]


def remove_checkpoints(exp_dir: PathLike, keep_last_k: int, up_to: int = 0) -> None:
    """Delete all but the newest ``keep_last_k`` checkpoint-B.pt files (0 keeps all).
    With ``up_to`` only files with B <= up_to are candidates: a file from beyond the
    running training's position is not this run's to prune."""
    if keep_last_k <= 0:
        return
    for path in find_checkpoints(exp_dir, iteration=up_to)[keep_last_k:]:
        path.unlink(missing_ok=True)
        logging.info(f"removed old checkpoint {path}")
