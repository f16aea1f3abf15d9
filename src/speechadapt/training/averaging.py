"""Which weights to decode with: one checkpoint, or an average (icefall's conventions).

  --checkpoint F                          the "model" entry of one file
  --epoch E --avg A                       plain mean of epoch-(E-A+1..E).pt
  --epoch E --avg A --use-averaged-model  (avg_E * b_E - avg_S * b_S) / (b_E - b_S), S = E-A
  --iter B --avg A [--use-averaged-model] the same over checkpoint-*.pt files up to B
  --best-valid K                          plain mean of the K epochs with the lowest
                                          validation loss (params["valid_loss"])

The name of a selection (``epoch-E-avg-A[-use-averaged-model]``, ``iter-B-avg-A...``,
``best-valid-K``, or the checkpoint's file stem) is what decoding files are called
after, as in icefall. Reads our files and icefall's own.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

from speechadapt.training.checkpoint import (average_checkpoints,
                                             average_checkpoints_with_averaged_model,
                                             find_checkpoints)
from speechadapt.utils.safe_load import safe_torch_load

AVERAGED_SUFFIX = "-use-averaged-model"


@dataclass
class WeightSelection:
    checkpoint: str = field(default="", metadata={
        "help": "a file with a 'model' entry, e.g. epoch-E-avg-A.pt (overrides --epoch/--iter)"})
    epoch: int = field(default=0, metadata={"help": "last epoch to average"})
    iter: int = field(default=0, metadata={"help": "use checkpoint-B.pt files up to B instead"})
    avg: int = field(default=1, metadata={"help": "number of checkpoints averaged"})
    use_averaged_model: bool = field(default=False, metadata={
        "help": "icefall's difference of running averages (needs --average-period > 0 in training)"})
    best_valid: int = field(default=0, metadata={"help": "mean of the K best epochs by validation loss"})

    def validate(self) -> None:
        if self.avg < 1:
            raise ValueError(f"--avg must be >= 1, got {self.avg}")
        if self.best_valid > 0 and self.use_averaged_model:
            raise ValueError("--best-valid takes a plain mean: do not combine with --use-averaged-model")


def _require(paths: List[Path]) -> List[Path]:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing checkpoint(s): {', '.join(missing)}")
    return paths


def epoch_files(exp_dir: Path) -> List[Tuple[int, Path]]:
    found = []
    for path in Path(exp_dir).glob("epoch-*.pt"):
        stem = path.stem[len("epoch-"):]
        if stem.isdigit():
            found.append((int(stem), path))
    return sorted(found)


def best_valid_files(exp_dir: Path, k: int) -> List[Path]:
    """The k epoch files with the lowest params["valid_loss"]."""
    scored = []
    for epoch, path in epoch_files(exp_dir):
        params = safe_torch_load(path).get("params") or {}
        if "valid_loss" not in params:
            raise KeyError(f"{path}: params has no valid_loss (trained without a validation set?)")
        scored.append((float(params["valid_loss"]), epoch, path))
    if len(scored) < k:
        raise ValueError(f"--best-valid {k}: only {len(scored)} epoch files in {exp_dir}")
    best = sorted(scored)[:k]
    logging.info("best epochs: " + ", ".join(f"{e} (valid {v:.4f})" for v, e, _ in best))
    return [p for _, _, p in best]


def model_avg_of(path: Path) -> Dict:
    """The running average stored in an epoch/checkpoint file (mean over all its batches)."""
    ckpt = safe_torch_load(path)
    if ckpt.get("model_avg") is None:
        raise KeyError(f"{path}: no 'model_avg' entry (run with --average-period > 0)")
    return ckpt["model_avg"]


def average_by_epoch(exp_dir: Path, epoch: int, avg: int, use_averaged_model: bool):
    if use_averaged_model:
        start = epoch - avg
        if start < 0:
            raise ValueError(f"--use-averaged-model needs epoch - avg >= 0, got {epoch} - {avg}")
        if start == 0:
            # from the start of training (b_S = 0): the formula reduces to model_avg_E
            (last,) = _require([exp_dir / f"epoch-{epoch}.pt"])
            return model_avg_of(last), [last]
        first, last = _require([exp_dir / f"epoch-{start}.pt", exp_dir / f"epoch-{epoch}.pt"])
        return average_checkpoints_with_averaged_model(first, last), [first, last]
    if epoch - avg + 1 < 1:
        raise ValueError(f"--epoch {epoch} --avg {avg}: needs epochs {epoch - avg + 1}..{epoch}")
    files = _require([exp_dir / f"epoch-{e}.pt" for e in range(epoch - avg + 1, epoch + 1)])
    return average_checkpoints(files), files


def average_by_iter(exp_dir: Path, iteration: int, avg: int, use_averaged_model: bool):
    files = find_checkpoints(exp_dir, iteration)
    needed = avg + 1 if use_averaged_model else avg
    if len(files) < needed:
        raise ValueError(f"--iter {iteration} --avg {avg}: needs {needed} checkpoint-*.pt files "
                         f"up to {iteration} in {exp_dir}, found {len(files)}")
    if use_averaged_model:
        first, last = files[avg], files[0]
        return average_checkpoints_with_averaged_model(first, last), [first, last]
    return average_checkpoints(files[:avg]), files[:avg]


def select_weights(exp_dir, selection: WeightSelection) -> Tuple[Dict, str, List[Path]]:
    """(state_dict, name, source files) for the weights ``selection`` names."""
    selection.validate()
    exp_dir = Path(exp_dir)
    if selection.checkpoint:
        data = safe_torch_load(selection.checkpoint)
        if not isinstance(data, dict) or "model" not in data:
            keys = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
            raise KeyError(f"{selection.checkpoint}: no 'model' entry (found {keys})")
        return data["model"], Path(selection.checkpoint).stem, [Path(selection.checkpoint)]
    if not exp_dir.is_dir():
        raise FileNotFoundError(f"--exp-dir {exp_dir} does not exist")
    if selection.best_valid > 0:
        files = best_valid_files(exp_dir, selection.best_valid)
        return average_checkpoints(files), f"best-valid-{selection.best_valid}", files
    averaged = AVERAGED_SUFFIX if selection.use_averaged_model else ""
    if selection.iter > 0:
        state, files = average_by_iter(exp_dir, selection.iter, selection.avg, selection.use_averaged_model)
        return state, f"iter-{selection.iter}-avg-{selection.avg}{averaged}", files
    if selection.epoch > 0:
        state, files = average_by_epoch(exp_dir, selection.epoch, selection.avg, selection.use_averaged_model)
        return state, f"epoch-{selection.epoch}-avg-{selection.avg}{averaged}", files
    raise ValueError("choose the weights: --checkpoint FILE, --epoch E [--avg A], --iter B or --best-valid K")
