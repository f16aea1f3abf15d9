"""Average checkpoints for decoding (icefall's conventions).

  --epoch E --avg A                       plain mean of epoch-(E-A+1..E).pt
  --epoch E --avg A --use-averaged-model  (avg_E * b_E - avg_S * b_S) / (b_E - b_S), S = E-A
  --iter B --avg A [--use-averaged-model] the same over checkpoint-*.pt files up to B
  --best-valid K                          plain mean of the K epochs with the lowest
                                          validation loss (params["valid_loss"])

Writes ``{"model": averaged}`` to exp_dir/epoch-E-avg-A.pt, iter-B-avg-A.pt or
best-valid-K.pt (or --output). Reads our files and icefall's own.

  python -m speechadapt.bin.average_checkpoints --exp-dir exp --epoch 30 --avg 9 \\
      --use-averaged-model true
"""

import argparse
import logging
from pathlib import Path
from typing import Dict, List, Tuple

from speechadapt.training.checkpoint import (average_checkpoints,
                                             average_checkpoints_with_averaged_model,
                                             find_checkpoints)
from speechadapt.utils.args import str2bool
from speechadapt.utils.io import atomic_save
from speechadapt.utils.safe_load import safe_torch_load


AVERAGED_SUFFIX = "-use-averaged-model"


def add_model_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """--epoch/--iter/--avg/--use-averaged-model/--best-valid (and --checkpoint for decoders)."""
    parser.add_argument("--epoch", type=int, default=0, help="last epoch to average")
    parser.add_argument("--iter", type=int, default=0, help="use checkpoint-B.pt files up to B instead")
    parser.add_argument("--avg", type=int, default=1, help="number of checkpoints averaged")
    parser.add_argument("--use-averaged-model", type=str2bool, default=False)
    parser.add_argument("--best-valid", type=int, default=0, help="mean of the K best epochs by valid loss")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp-dir", type=Path, required=True)
    add_model_selection_arguments(parser)
    parser.add_argument("--output", type=Path, default=None, help="default: a name in --exp-dir")
    return parser


def _require(paths: List[Path]) -> List[Path]:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing checkpoint(s): {', '.join(missing)}")
    return paths


def _epoch_files(exp_dir: Path) -> List[Tuple[int, Path]]:
    found = []
    for path in exp_dir.glob("epoch-*.pt"):
        stem = path.stem[len("epoch-"):]
        if stem.isdigit():
            found.append((int(stem), path))
    return sorted(found)


def best_valid_files(exp_dir: Path, k: int) -> List[Path]:
    """The k epoch files with the lowest params["valid_loss"]."""
    scored = []
    for epoch, path in _epoch_files(exp_dir):
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


def select_weights(args: argparse.Namespace) -> Tuple[Dict, str, List[Path]]:
    """(state_dict, name, source files) for the model chosen by the selection flags.

    ``args.checkpoint`` (when the parser has it and it is set) wins: a file with a
    "model" entry, e.g. one this tool wrote. The name is what the files of a decoding
    run are called after (``epoch-E-avg-A[-use-averaged-model]``, ``iter-B-avg-A...``,
    ``best-valid-K``), as in icefall.
    """
    exp_dir = Path(args.exp_dir)
    checkpoint = getattr(args, "checkpoint", None)
    if checkpoint:
        data = safe_torch_load(checkpoint)
        if "model" not in data:
            raise KeyError(f"{checkpoint}: no 'model' entry (keys: {sorted(data)[:8]})")
        return data["model"], Path(checkpoint).stem, [Path(checkpoint)]
    if not exp_dir.is_dir():
        raise FileNotFoundError(f"--exp-dir {exp_dir} does not exist")
    if args.avg < 1:
        raise ValueError(f"--avg must be >= 1, got {args.avg}")
    if args.best_valid > 0:
        if args.use_averaged_model:
            raise ValueError("--best-valid takes a plain mean: do not combine with --use-averaged-model")
        files = best_valid_files(exp_dir, args.best_valid)
        return average_checkpoints(files), f"best-valid-{args.best_valid}", files
    averaged = AVERAGED_SUFFIX if args.use_averaged_model else ""
    if args.iter > 0:
        state, files = average_by_iter(exp_dir, args.iter, args.avg, args.use_averaged_model)
        return state, f"iter-{args.iter}-avg-{args.avg}{averaged}", files
    if args.epoch > 0:
        state, files = average_by_epoch(exp_dir, args.epoch, args.avg, args.use_averaged_model)
        return state, f"epoch-{args.epoch}-avg-{args.avg}{averaged}", files
    raise ValueError("give --epoch, --iter or --best-valid" + (" (or --checkpoint)" if hasattr(args, "checkpoint") else ""))


def main(argv=None) -> Path:
    args = get_parser().parse_args(argv)
    state, name, files = select_weights(args)
    # the file is named epoch-E-avg-A.pt either way (what recipes and icefall expect)
    output = args.output or args.exp_dir / f"{name.removesuffix(AVERAGED_SUFFIX)}.pt"
    atomic_save({"model": state, "averaged_from": [str(f) for f in files],
                 "use_averaged_model": bool(args.use_averaged_model)}, output)
    logging.info(f"averaged {len(files)} files -> {output}")
    return output


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    main()
