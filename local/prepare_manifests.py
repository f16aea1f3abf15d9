#!/usr/bin/env python3
"""Stage: lhotse manifests (recordings, supervisions, cuts; jsonl.gz) from metadata rows.

    python local/prepare_manifests.py --audio-dir data/audio --manifest-dir data/manifests \
        --prefix synth --splits train,dev,test --noise-splits noise

Each split is described by ``<audio-dir>/<split>.jsonl``: one JSON object per utterance
with ``id``, ``audio`` (a path) and ``text`` (plus any of the cut fields ``domain``,
``voice``, ``split``, ``seen_in_train``, ``noise_type``, ``snr_db``). Noise splits have
no text. Writes ``<prefix>_{recordings,supervisions,cuts}_<split>.jsonl.gz``,
validated. Corrupt or truncated audio stops with an error naming the file; a wrong
sample rate is resampled (``--on-wrong-rate resample``) or rejected (``error``); empty
transcripts are reported and skipped. A split is redone when its metadata file changed.
"""

import argparse
import time
from pathlib import Path

from speechadapt.data.manifests import write_noise_manifests, write_split_manifests
from speechadapt.data.prep_utils import comma_list, file_stamp, is_done, mark_done, read_jsonl, setup_stage_logging
from speechadapt.utils.flags import parse_args


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio-dir", default="data/audio", help="holds <split>.jsonl metadata")
    parser.add_argument("--manifest-dir", default="data/manifests")
    parser.add_argument("--prefix", required=True, help="corpus name in the manifest file names")
    parser.add_argument("--splits", type=comma_list, required=True, help="comma-separated split names")
    parser.add_argument("--noise-splits", type=comma_list, default=[], help="splits of noise recordings")
    parser.add_argument("--on-wrong-rate", choices=("resample", "error"), default="resample")
    parser.add_argument("--force", action="store_true")
    return parser


def main(argv=None) -> None:
    setup_stage_logging()
    args = parse_args(get_parser(), argv, entry_point="prepare_manifests")
    start = time.time()
    for split in args.splits + args.noise_splits:
        meta = Path(args.audio_dir) / f"{split}.jsonl"
        settings = {"split": split, "prefix": args.prefix, "metadata": file_stamp(meta),
                    "on_wrong_rate": args.on_wrong_rate}
        if is_done(args.manifest_dir, f"manifests-{args.prefix}-{split}", settings) and not args.force:
            print(f"{split}: manifests up to date")
            continue
        rows = read_jsonl(meta)
        if split in args.noise_splits:
            cuts = write_noise_manifests(rows, args.manifest_dir, args.prefix, split)
        else:
            cuts = write_split_manifests(rows, split, args.manifest_dir, args.prefix, args.on_wrong_rate)
        mark_done(args.manifest_dir, f"manifests-{args.prefix}-{split}", settings)
        hours = sum(c.duration for c in cuts) / 3600
        print(f"{split}: {len(cuts)} cuts, {hours:.3f} h, skipped {len(rows) - len(cuts)}")
    print(f"manifests: done in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
