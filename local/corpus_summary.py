#!/usr/bin/env python3
"""Stage: print (and save as JSON) the split summary of the fbank cuts.

    python local/corpus_summary.py --fbank-dir data/fbank --out data/corpus_summary.json
"""

import argparse
import json
from pathlib import Path

from lhotse import load_manifest_lazy

from speechadapt.data.features import fbank_cuts_path
from speechadapt.data.summary import format_table, summarise_cuts
from speechadapt.data.synth import ALL_SPLITS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fbank-dir", default="data/fbank")
    parser.add_argument("--splits", default=",".join(ALL_SPLITS))
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = []
    for split in [s for s in args.splits.split(",") if s]:
        path = fbank_cuts_path(args.fbank_dir, split)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: run the fbank stages first")
        rows.append(summarise_cuts(split, load_manifest_lazy(path)))
    print(format_table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
