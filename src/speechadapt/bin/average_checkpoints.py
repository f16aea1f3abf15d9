"""Average checkpoints for decoding (icefall's conventions; see
:mod:`speechadapt.training.averaging` for the selection flags).

Writes ``{"model": averaged, "model_spec": ...}`` to exp_dir/epoch-E-avg-A.pt,
iter-B-avg-A.pt or best-valid-K.pt (or --output); the spec (from exp_dir/model.json,
when there) makes the file self-describing.

  python -m speechadapt.bin.average_checkpoints --exp-dir exp --epoch 30 --avg 9 \\
      --use-averaged-model true
"""

import argparse
import json
import logging
from pathlib import Path

from speechadapt.models.registry import SPEC_FILE
from speechadapt.training.averaging import AVERAGED_SUFFIX, WeightSelection, select_weights
from speechadapt.utils.flags import add_dataclass_arguments, dataclass_from_args, parse_args
from speechadapt.utils.io import atomic_save


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp-dir", type=Path, required=True)
    add_dataclass_arguments(parser, WeightSelection, "weights", exclude=("checkpoint",))
    parser.add_argument("--output", type=Path, default=None, help="default: a name in --exp-dir")
    return parser


def main(argv=None) -> Path:
    args = parse_args(get_parser(), argv, entry_point="average_checkpoints")
    selection = dataclass_from_args(WeightSelection, args)
    state, name, files = select_weights(args.exp_dir, selection)
    # the file is named epoch-E-avg-A.pt either way (what recipes and icefall expect)
    output = args.output or args.exp_dir / f"{name.removesuffix(AVERAGED_SUFFIX)}.pt"
    spec_path = args.exp_dir / SPEC_FILE
    spec = json.loads(spec_path.read_text()) if spec_path.is_file() else None
    atomic_save({"model": state, "averaged_from": [str(f) for f in files],
                 "use_averaged_model": bool(selection.use_averaged_model), "model_spec": spec}, output)
    logging.info(f"averaged {len(files)} files -> {output}")
    return output


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    main()
