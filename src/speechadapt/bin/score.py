"""Score a hypothesis text file against a reference, both Kaldi style (``utt-id w1 w2 ...``).

    python -m speechadapt.bin.score --ref data/test/text --hyp exp/decode/hyp.txt \
        --errs exp/decode/errs-test.txt [--results exp/results.jsonl --method ctc]
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import Dict

from speechadapt.decoding.scoring import (
    ResultRecord,
    append_result,
    count_errors,
    write_error_stats,
)
from speechadapt.decoding.text_norm import TextNormConfig, normalize_words
from speechadapt.utils.args import str2bool


def read_kaldi_text(path: Path) -> Dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"no such text file: {path}")
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if parts[0] in out:
            raise ValueError(f"{path}:{n}: utterance id {parts[0]!r} appears twice")
        out[parts[0]] = parts[1] if len(parts) > 1 else ""
    return out


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", type=Path, required=True)
    p.add_argument("--hyp", type=Path, required=True)
    p.add_argument("--errs", type=Path, default=None, help="write icefall-style error stats here")
    p.add_argument("--test-set", default="test")
    p.add_argument("--normalize", type=str2bool, default=True, help="lower-case, drop punctuation")
    p.add_argument("--results", type=Path, default=None, help="append a record to this results.jsonl")
    p.add_argument("--method", default="external")
    return p


def main(argv=None) -> float:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    refs, hyps = read_kaldi_text(args.ref), read_kaldi_text(args.hyp)
    missing = sorted(set(refs) - set(hyps))
    extra = sorted(set(hyps) - set(refs))
    if missing:
        logging.warning(f"{len(missing)} reference utterances have no hypothesis (scored as empty), e.g. {missing[:3]}")
    if extra:
        logging.warning(f"{len(extra)} hypotheses have no reference (ignored), e.g. {extra[:3]}")
    norm = TextNormConfig(lower=args.normalize, remove_punct=args.normalize)
    results = [
        (utt, normalize_words(refs[utt], norm), normalize_words(hyps.get(utt, ""), norm))
        for utt in sorted(refs)
    ]
    if args.errs:
        args.errs.parent.mkdir(parents=True, exist_ok=True)
        with open(args.errs, "w", encoding="utf-8") as f:
            wer = write_error_stats(f, args.test_set, results, enable_log=False)
    counts = count_errors(results)
    wer = counts.wer
    print(
        f"%WER {wer:.2f} [ {counts.errors} / {counts.ref_words}, {counts.ins} ins, "
        f"{counts.dels} del, {counts.subs} sub ] {args.test_set}"
    )
    if args.results:
        append_result(args.results, ResultRecord.from_counts(args.method, args.test_set, counts, model=str(args.hyp)))
    return wer


if __name__ == "__main__":
    main()
    sys.exit(0)
