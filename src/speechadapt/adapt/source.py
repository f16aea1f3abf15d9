"""The model an adaptation method starts from, the same way for every entry point.

``speechadapt.bin.finetune`` and ``speechadapt.bin.tta`` take either a trained
experiment directory (``--source-exp-dir`` with the weight flags of
:class:`speechadapt.training.averaging.WeightSelection`) or ``--model KIND`` with that
kind's own flags (a local Hugging Face directory, an icefall checkpoint).
"""

import argparse
from pathlib import Path
from typing import Sequence, Tuple

from speechadapt.models.registry import MODEL_KINDS, get_kind, load_model, read_spec
from speechadapt.training.averaging import WeightSelection
from speechadapt.utils.flags import add_dataclass_arguments, dataclass_from_args, find_flag_value


def add_source_arguments(parser: argparse.ArgumentParser, tokens: Sequence[str] = ()) -> None:
    """``--source-exp-dir`` / ``--model`` and the flags of the kind ``tokens`` names."""
    kind = find_flag_value(list(tokens), "--model")
    parser.add_argument("--source-exp-dir", type=Path, default=None, help="the trained model's experiment directory")
    parser.add_argument("--model", choices=sorted(MODEL_KINDS), default=None,
                        help="instead of --source-exp-dir: build the source from this kind's files")
    add_dataclass_arguments(parser, WeightSelection, "source weights (with --source-exp-dir)")
    if kind in MODEL_KINDS:
        add_dataclass_arguments(parser, MODEL_KINDS[kind].options(), f"model ({kind})")


def load_source(args: argparse.Namespace, device) -> Tuple[object, str]:
    """(model, a name for the records: ``EXP_DIR:WEIGHTS`` or the kind)."""
    check_source_choice(args)
    if args.source_exp_dir:
        model, weights = load_model(args.source_exp_dir, dataclass_from_args(WeightSelection, args), device)
        return model, f"{args.source_exp_dir}:{weights}"
    kind = get_kind(args.model)
    return kind.build(dataclass_from_args(kind.options(), args), device), args.model


def check_source_choice(args: argparse.Namespace) -> None:
    if bool(args.source_exp_dir) == bool(args.model):
        raise ValueError("give the source model: --source-exp-dir D (with --checkpoint / --epoch ...) or --model KIND")


def check_source(args: argparse.Namespace) -> None:
    """Raise (OSError / ValueError) before any work when the source's files are missing."""
    check_source_choice(args)
    if args.source_exp_dir:
        read_spec(args.source_exp_dir)
    else:
        kind = get_kind(args.model)
        kind.check(dataclass_from_args(kind.options(), args))
