#!/usr/bin/env python3
"""Stage: 80-dim fbank (lhotse Fbank, LilcomChunkyWriter) for the given splits.

    python local/compute_fbank.py --manifest-dir data/manifests --fbank-dir data/fbank \
        --splits source_dev,source_test --num-jobs 2
    python local/compute_fbank.py ... --splits source_train --speed-perturb true

Writes ``<fbank-dir>/synth_cuts_<split>.jsonl.gz`` (+ ``synth_feats_<split>.lca``),
checks that every feature matrix has the frames its duration implies.
"""

import argparse
import logging
import time
from pathlib import Path

import torch
from lhotse import load_manifest

from speechadapt.data.features import featurise_split
from speechadapt.data.manifests import manifest_paths
from speechadapt.data.prep_utils import is_done, mark_done, setup_stage_logging
from speechadapt.utils.args import str2bool


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest-dir", default="data/manifests")
    parser.add_argument("--fbank-dir", default="data/fbank")
    parser.add_argument("--splits", required=True, help="comma-separated split names")
    parser.add_argument("--speed-perturb", type=str2bool, default=False,
                        help="add 0.9/1.1 speed-perturbed copies (use for training splits)")
    parser.add_argument("--num-jobs", type=int, default=1)
    parser.add_argument("--force", action="store_true")
    return parser


def main() -> None:
    setup_stage_logging()
    args = get_parser().parse_args()
    torch.set_num_threads(1)  # feature workers are processes; keep each single-threaded
    start = time.time()
    for split in [s for s in args.splits.split(",") if s]:
        source = manifest_paths(args.manifest_dir, split)["cuts"]
        if not source.is_file():
            raise FileNotFoundError(f"{source} does not exist: run the manifest stage first")
        stat = source.stat()
        settings = {"split": split, "source": str(source), "size": stat.st_size,
                    "mtime": stat.st_mtime, "speed_perturb": args.speed_perturb, "mel_bins": 80}
        if is_done(args.fbank_dir, f"fbank-{split}", settings) and not args.force:
            print(f"{split}: fbank up to date")
            continue
        t0 = time.time()
        cuts = featurise_split(load_manifest(source), args.fbank_dir, split, args.num_jobs,
                               args.speed_perturb)
        mark_done(args.fbank_dir, f"fbank-{split}", settings)
        hours = sum(c.duration for c in cuts) / 3600
        print(f"{split}: {len(cuts)} cuts, {hours:.3f} h of fbank in {time.time() - t0:.1f} s")
    print(f"fbank: done in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
