#!/usr/bin/env python3
"""Stage: 80-dim fbank (lhotse Fbank, LilcomChunkyWriter) for the given splits.

    python local/compute_fbank.py --manifest-dir data/manifests --fbank-dir data/fbank \
        --prefix synth --splits dev,test --num-jobs 2
    python local/compute_fbank.py ... --splits train --speed-perturb true

Reads ``<manifest-dir>/<prefix>_cuts_<split>.jsonl.gz``, writes
``<fbank-dir>/<prefix>_cuts_<split>.jsonl.gz`` (+ ``<prefix>_feats_<split>.lca``) and
checks that every feature matrix has the frames its duration implies.
"""

import argparse
import time

import torch

from speechadapt.data.features import featurise_split
from speechadapt.data.manifests import manifest_paths, open_manifest
from speechadapt.data.prep_utils import comma_list, file_stamp, is_done, mark_done, setup_stage_logging
from speechadapt.utils.args import str2bool
from speechadapt.utils.flags import parse_args


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest-dir", default="data/manifests")
    parser.add_argument("--fbank-dir", default="data/fbank")
    parser.add_argument("--prefix", required=True, help="corpus name in the manifest file names")
    parser.add_argument("--splits", type=comma_list, required=True, help="comma-separated split names")
    parser.add_argument("--speed-perturb", type=str2bool, default=False,
                        help="add 0.9/1.1 speed-perturbed copies (use for training splits)")
    parser.add_argument("--no-features", type=str2bool, default=False,
                        help="write the (speed-perturbed) cuts without features: train with --on-the-fly-feats true")
    parser.add_argument("--num-jobs", type=int, default=1)
    parser.add_argument("--force", action="store_true")
    return parser


def main(argv=None) -> None:
    setup_stage_logging()
    args = parse_args(get_parser(), argv, entry_point="compute_fbank")
    torch.set_num_threads(1)  # feature workers are processes; keep each single-threaded
    start = time.time()
    for split in args.splits:
        source = manifest_paths(args.manifest_dir, split, args.prefix)["cuts"]
        if not source.is_file():
            raise FileNotFoundError(f"{source} does not exist: run the manifest stage first")
        settings = {"split": split, "source": file_stamp(source), "speed_perturb": args.speed_perturb,
                    "mel_bins": 80, "no_features": args.no_features}
        marker = f"fbank-{args.prefix}-{split}"
        if is_done(args.fbank_dir, marker, settings) and not args.force:
            print(f"{split}: fbank up to date")
            continue
        t0 = time.time()
        cuts = featurise_split(open_manifest(source, lazy=False), args.fbank_dir, split, args.prefix, args.num_jobs,
                               args.speed_perturb, store=not args.no_features)
        mark_done(args.fbank_dir, marker, settings)
        hours = sum(c.duration for c in cuts) / 3600
        what = "cuts for on-the-fly fbank" if args.no_features else "of fbank"
        print(f"{split}: {len(cuts)} cuts, {hours:.3f} h {what} in {time.time() - t0:.1f} s")
    print(f"fbank: done in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
