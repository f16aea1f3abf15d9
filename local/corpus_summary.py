#!/usr/bin/env python3
"""Stage: print (and save as JSON) the split summary of the fbank cuts.

    python local/corpus_summary.py --fbank-dir data/fbank --prefix synth --splits train,test \
        --out data/corpus_summary.json
"""

import argparse
import json


from speechadapt.data.features import fbank_cuts_path
from speechadapt.data.manifests import open_manifest
from speechadapt.data.prep_utils import comma_list
from speechadapt.data.summary import format_table, summarise_cuts
from speechadapt.utils.flags import parse_args
from speechadapt.utils.io import atomic_write_text


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fbank-dir", default="data/fbank")
    parser.add_argument("--prefix", required=True, help="corpus name in the manifest file names")
    parser.add_argument("--splits", type=comma_list, required=True, help="comma-separated split names")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    return parser


def main(argv=None) -> None:
    args = parse_args(get_parser(), argv, entry_point="corpus_summary")
    rows = []
    for split in args.splits:
        path = fbank_cuts_path(args.fbank_dir, split, args.prefix)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: run the fbank stages first")
        rows.append(summarise_cuts(split, open_manifest(path)))
    print(format_table(rows))
    if args.out:
        atomic_write_text(json.dumps(rows, indent=1) + "\n", args.out)


if __name__ == "__main__":
    main()
