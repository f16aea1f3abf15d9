#!/usr/bin/env python3
"""Stage: several cut manifests as one shuffled training split (icefall's train-all-shuf).

    python3 local/combine_cuts.py --fbank-dir data/fbank --prefix librispeech \
        --splits train-clean-100,train-clean-360,train-other-500 --out-split train-all-shuf

Lines (one cut each) of ``<prefix>_cuts_<split>.jsonl.gz`` are shuffled with ``--seed``
and written atomically to ``<prefix>_cuts_<out-split>.jsonl.gz``; the count written is
checked against the count read, and a repeated cut id is an error (the same part twice).
"""

import argparse
import gzip
import json
import random
from pathlib import Path

from speechadapt.data.prep_utils import comma_list, file_stamp, is_done, mark_done, setup_stage_logging
from speechadapt.utils.io import atomic_write_bytes


def main(argv=None) -> None:
    setup_stage_logging()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fbank-dir", type=Path, required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--splits", type=comma_list, required=True)
    p.add_argument("--out-split", required=True)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    paths = [args.fbank_dir / f"{args.prefix}_cuts_{s}.jsonl.gz" for s in args.splits]
    missing = [str(q) for q in paths if not q.is_file()]
    if missing:
        raise SystemExit(f"error: no such cut manifest(s): {', '.join(missing)} (run the fbank stage first)")
    out = args.fbank_dir / f"{args.prefix}_cuts_{args.out_split}.jsonl.gz"
    settings = dict(inputs=[file_stamp(q) for q in paths], seed=args.seed)
    if is_done(args.fbank_dir, f"combine-{args.out_split}", settings) and out.is_file():
        print(f"{args.out_split}: up to date")
        return
    lines, ids = [], set()
    for path in paths:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                cut_id = json.loads(line)["id"]
                if cut_id in ids:
                    raise SystemExit(f"error: {path}:{n}: cut {cut_id!r} already read from an earlier split")
                ids.add(cut_id)
                lines.append(line if line.endswith("\n") else line + "\n")
    random.Random(args.seed).shuffle(lines)
    atomic_write_bytes(gzip.compress("".join(lines).encode("utf-8")), out)
    with gzip.open(out, "rt", encoding="utf-8") as f:
        written = sum(1 for line in f if line.strip())
    if written != len(lines):
        raise SystemExit(f"error: {out}: wrote {written} cuts of {len(lines)}")
    mark_done(args.fbank_dir, f"combine-{args.out_split}", settings)
    print(f"{args.out_split}: {written} cuts from {len(paths)} splits")


if __name__ == "__main__":
    main()
