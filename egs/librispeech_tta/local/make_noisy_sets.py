#!/usr/bin/env python3
"""Stage: copies of a LibriSpeech part with Gaussian noise added once and stored, and their manifests.

    python3 local/make_noisy_sets.py --manifest-dir data/manifests --prefix librispeech --split test-other \
        --stds 0.005,0.01 --seed 0 --audio-dir data/noisy

For each std: ``<audio-dir>/<split>-noise<std>/<id>.flac`` (x + std * N(0,1), per-utterance
generators seeded by --seed and the cut id) and ``<prefix>_cuts_<split>-noise<std>.jsonl.gz``
(``speechadapt.data.corpora.noisy``); redone only when the settings or the input changed.
"""

import argparse
from pathlib import Path

from speechadapt.data.corpora.noisy import noisy_rows
from speechadapt.data.manifests import manifest_paths, open_manifest, write_split_manifests
from speechadapt.data.prep_utils import comma_list, file_stamp, is_done, mark_done, setup_stage_logging


def main(argv=None) -> None:
    setup_stage_logging()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest-dir", type=Path, required=True)
    p.add_argument("--prefix", default="librispeech")
    p.add_argument("--split", default="test-other")
    p.add_argument("--stds", type=comma_list, default=["0.005", "0.01"], help="noise standard deviations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--audio-dir", type=Path, required=True)
    args = p.parse_args(argv)
    source = manifest_paths(args.manifest_dir, args.split, args.prefix)["cuts"]
    for std in map(float, args.stds):
        name = f"{args.split}-noise{std:g}"
        settings = dict(source=file_stamp(source), std=std, seed=args.seed)
        if is_done(args.manifest_dir, f"noisy-{args.prefix}-{name}", settings):
            print(f"{name}: up to date")
            continue
        rows, clipped = noisy_rows(open_manifest(source), std, args.seed, args.audio_dir / name, name)
        cuts = write_split_manifests(rows, name, args.manifest_dir, args.prefix)
        mark_done(args.manifest_dir, f"noisy-{args.prefix}-{name}", settings)
        print(f"{name}: {len(cuts)} utterances, noise std {std:g}, seed {args.seed}, {clipped} samples clipped")


if __name__ == "__main__":
    main()
