#!/usr/bin/env python3
"""Stage: lhotse manifests of TED-LIUM 3 (legacy distribution), or a miniature release first.

    python3 local/prepare_tedlium.py --corpus-dir download/TEDLIUM_release-3 --splits train,dev,test \
        --manifest-dir data/manifests [--probe-split dev,test]
    python3 local/prepare_tedlium.py --write-miniature download/smoke            # --smoke

One cut per scored STM segment (``speechadapt.data.corpora.tedlium``): reversed segments,
segments outside their audio, talks without audio and empty transcripts are skipped and
counted with their file and line (an error beyond --max-skipped); the
``ignore_time_segment_in_scoring`` lines are counted apart. With --probe-split: the segments
of those splits in two halves with the same speakers (``tedlium_cuts_probe-train`` /
``probe-test``), for the speaker-identification probe.
"""

import argparse
import logging
from pathlib import Path

from lhotse import CutSet

from speechadapt.data.corpora.miniature import write_mini_tedlium
from speechadapt.data.corpora.tedlium import prepare_tedlium, speaker_halves
from speechadapt.data.manifests import manifest_paths, open_manifest
from speechadapt.data.prep_utils import comma_list, setup_stage_logging


def main(argv=None) -> None:
    setup_stage_logging()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus-dir", type=Path, help="TEDLIUM_release-3 (holds legacy/)")
    p.add_argument("--splits", type=comma_list, default=["train", "dev", "test"])
    p.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"))
    p.add_argument("--prefix", default="tedlium")
    p.add_argument("--max-skipped", type=float, default=0.01)
    p.add_argument("--probe-split", type=comma_list, default=[], help="splits halved for the speaker probe")
    p.add_argument("--write-miniature", type=Path, default=None, help="only write a miniature release below this")
    p.add_argument("--num-jobs", type=int, default=1)
    args = p.parse_args(argv)
    if args.write_miniature:
        print(write_mini_tedlium(args.write_miniature, num_jobs=args.num_jobs))
        return
    if args.corpus_dir is None:
        raise SystemExit("error: give --corpus-dir (or --write-miniature)")
    try:
        reports = prepare_tedlium(args.corpus_dir, args.splits, args.manifest_dir, args.prefix, args.max_skipped)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    for report in reports.values():
        print(report.line())
    if args.probe_split:
        cuts = CutSet.from_cuts(c for s in args.probe_split
                                for c in open_manifest(manifest_paths(args.manifest_dir, s, args.prefix)["cuts"]))
        first, second, note = speaker_halves(cuts)
        if note:
            logging.warning(note)
        for name, half in (("probe-train", first), ("probe-test", second)):
            half.to_file(manifest_paths(args.manifest_dir, name, args.prefix)["cuts"])
        print(f"speaker probe: {len(first)} / {len(second)} segments of "
              f"{len({c.supervisions[0].speaker for c in first})} speakers")


if __name__ == "__main__":
    main()
