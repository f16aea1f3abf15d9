#!/usr/bin/env python3
"""Stage: lhotse manifests of a Common Voice language (or write a miniature release first).

    python3 local/prepare_commonvoice.py --corpus-dir download/cv-corpus-17.0-2024-03-15 --lang hi \
        --splits train,dev,test --manifest-dir data/manifests
    python3 local/prepare_commonvoice.py --write-miniature download/smoke --lang hi   # --smoke

Writes ``cv-<lang>_{recordings,supervisions,cuts}_<split>.jsonl.gz`` and a report per split
(``speechadapt.data.corpora.commonvoice``): rows whose clip is missing, whose mp3 does not
decode or whose sentence is empty are skipped and counted; more than --max-skipped of a
split is an error.
"""

import argparse
from pathlib import Path

from speechadapt.data.corpora.commonvoice import prepare_commonvoice
from speechadapt.data.corpora.miniature import write_mini_commonvoice
from speechadapt.data.prep_utils import comma_list, setup_stage_logging


def main(argv=None) -> None:
    setup_stage_logging()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus-dir", type=Path, help="cv-corpus-*/ (or its parent, or its <lang>/ folder)")
    p.add_argument("--lang", default="hi", help="Common Voice language code (a folder of the release)")
    p.add_argument("--splits", type=comma_list, default=["train", "dev", "test"])
    p.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"))
    p.add_argument("--max-skipped", type=float, default=0.01, help="fraction of a split's rows that may be skipped")
    p.add_argument("--num-jobs", type=int, default=2)
    p.add_argument("--texts-out", type=Path, default=None, help="also write the splits' sentences to this file")
    p.add_argument("--write-miniature", type=Path, default=None,
                   help="only write a miniature release (synthetic speech) below this folder")
    args = p.parse_args(argv)
    if args.write_miniature:
        print(write_mini_commonvoice(args.write_miniature, args.lang, num_jobs=args.num_jobs))
        return
    if args.corpus_dir is None:
        raise SystemExit("error: give --corpus-dir (or --write-miniature)")
    try:
        reports = prepare_commonvoice(args.corpus_dir, args.lang, args.splits, args.manifest_dir,
                                      max_skipped=args.max_skipped, num_jobs=args.num_jobs)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    for report in reports.values():
        print(report.line())
    if args.texts_out:  # the sentences of the prepared splits, one a line (a stand-in tokenizer's text)
        from speechadapt.data.manifests import open_manifest

        lines = [s.text for split in args.splits for c in open_manifest(
            args.manifest_dir / f"cv-{args.lang}_cuts_{split}.jsonl.gz") for s in c.supervisions]
        args.texts_out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
