#!/usr/bin/env python3
"""Stage: lhotse manifests (recordings, supervisions, cuts; jsonl.gz) from corpus metadata.

    python local/prepare_manifests.py --audio-dir data/audio --manifest-dir data/manifests

Writes ``synth_{recordings,supervisions,cuts}_<split>.jsonl.gz`` per split plus the
noise recordings/cuts, validated. Corrupt or truncated audio stops with an error
naming the file; a wrong sample rate is resampled (``--on-wrong-rate resample``) or
rejected (``error``); empty transcripts are reported and skipped.
"""

import argparse
import logging
import time
from pathlib import Path

from speechadapt.data.manifests import write_noise_manifests, write_split_manifests
from speechadapt.data.prep_utils import (is_done, mark_done, marker_path, read_jsonl,
                                         setup_stage_logging)
from speechadapt.data.synth import ALL_SPLITS, NOISE_SPLIT


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio-dir", default="data/audio")
    parser.add_argument("--manifest-dir", default="data/manifests")
    parser.add_argument("--splits", default=",".join(ALL_SPLITS + (NOISE_SPLIT,)))
    parser.add_argument("--on-wrong-rate", choices=("resample", "error"), default="resample")
    parser.add_argument("--force", action="store_true")
    return parser


def main() -> None:
    setup_stage_logging()
    args = get_parser().parse_args()
    start = time.time()
    synth_marker = marker_path(args.audio_dir, "synth")
    for split in [s for s in args.splits.split(",") if s]:
        meta = Path(args.audio_dir) / f"{split}.jsonl"
        settings = {"split": split, "metadata": str(meta), "on_wrong_rate": args.on_wrong_rate,
                    "corpus": synth_marker.read_text() if synth_marker.is_file() else None}
        if is_done(args.manifest_dir, f"manifests-{split}", settings) and not args.force:
            print(f"{split}: manifests up to date")
            continue
        rows = read_jsonl(meta)
        if split == NOISE_SPLIT:
            cuts = write_noise_manifests(rows, args.manifest_dir)
        else:
            cuts = write_split_manifests(rows, split, args.manifest_dir, args.on_wrong_rate)
        mark_done(args.manifest_dir, f"manifests-{split}", settings)
        hours = sum(c.duration for c in cuts) / 3600
        print(f"{split}: {len(cuts)} cuts, {hours:.3f} h, skipped {len(rows) - len(cuts)}")
    print(f"manifests: done in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
