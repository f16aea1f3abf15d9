#!/usr/bin/env python3
"""Stage: metadata rows and manifests of CHiME-3's et05 sets from the LDC release layout.

    python3 local/prepare_chime3.py --chime3-dir /corpora/CHiME3 --manifest-dir data/manifests --prefix librispeech

Reads ``data/audio/16kHz/enhanced/et05_*/*.wav`` with ``data/transcriptions/et05_*/*.trn``
(``speechadapt.data.corpora.chime3``) into the split ``chime3-et05``; a wav without its
transcription is skipped and counted (an error beyond --max-skipped), a wav that does not
decode is an error naming it.
"""

import argparse
from pathlib import Path

from speechadapt.data.corpora.chime3 import ET05_SETS, chime3_rows
from speechadapt.data.manifests import write_split_manifests
from speechadapt.data.prep_utils import comma_list, setup_stage_logging


def main(argv=None) -> None:
    setup_stage_logging()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chime3-dir", type=Path, required=True, help="the CHiME3 folder (holds data/)")
    p.add_argument("--sets", type=comma_list, default=list(ET05_SETS))
    p.add_argument("--manifest-dir", type=Path, required=True)
    p.add_argument("--prefix", default="librispeech")
    p.add_argument("--split", default="chime3-et05")
    p.add_argument("--max-skipped", type=float, default=0.01)
    args = p.parse_args(argv)
    try:
        rows, report = chime3_rows(args.chime3_dir, args.sets, split=args.split)
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}") from None
    report.check(args.max_skipped)
    cuts = write_split_manifests(rows, args.split, args.manifest_dir, args.prefix)
    report.write(args.manifest_dir / f"{args.prefix}_{args.split}.report.json")
    print(f"{report.line()}; {len(cuts)} cuts")


if __name__ == "__main__":
    main()
