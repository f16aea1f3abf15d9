#!/usr/bin/env python3
"""synth recipe, stage 0: synthesise the corpus (audio + per-split metadata jsonl).

    python local/synthesise_corpus.py --config conf/corpus_full.yaml --audio-dir data/audio --num-jobs 2

Sizes, voices, rate/pitch ranges, the neural voice's share and prosody and the target noise are the fields of
``speechadapt.data.synth.CorpusConfig``: one flag each (``--num-source-train 200``,
``--target-snr-db 20,30`` ...), or a YAML file of them with ``--config`` (flags on the
command line win). Skipped when a previous run finished with exactly the same
settings (done marker in the audio dir). Writes ``<audio-dir>/<split>.jsonl`` for every
split and the noise recordings (and ``extra_splits.txt``: the evaluation-only splits,
source_test by synthesiser and the held-out neural-voice set), which ``local/prepare_manifests.py`` turns into
manifests.
"""

import argparse
import dataclasses
import json
import logging
import time

from speechadapt.data.prep_utils import is_done, mark_done, read_jsonl, setup_stage_logging
from speechadapt.data.synth import (ALL_SPLITS, NOISE_SPLIT, CorpusConfig, prepare_corpus, report_splits,
                                    summarise_rows)
from speechadapt.utils.io import atomic_write_text
from speechadapt.utils.flags import add_dataclass_arguments, dataclass_from_args, parse_args


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio-dir", default="data/audio")
    parser.add_argument("--num-jobs", type=int, default=2)
    parser.add_argument("--force", action="store_true", help="re-synthesise even if done")
    add_dataclass_arguments(parser, CorpusConfig, "corpus")
    return parser


def main(argv=None) -> None:
    setup_stage_logging()
    args = parse_args(get_parser(), argv, entry_point="synthesise_corpus")
    cfg = dataclass_from_args(CorpusConfig, args)
    settings = dataclasses.asdict(cfg)
    start = time.time()
    if is_done(args.audio_dir, "synth", settings) and not args.force:
        logging.info("%s: corpus already synthesised with these settings; skipping", args.audio_dir)
        rows = {s: read_jsonl(f"{args.audio_dir}/{s}.jsonl")
                for s in ALL_SPLITS + tuple(report_splits(cfg)) + (NOISE_SPLIT,)}
    else:
        rows = prepare_corpus(cfg, args.audio_dir, args.num_jobs)
        # the evaluation-only splits this config adds, for the manifest and fbank stages
        atomic_write_text("".join(f"{s}\n" for s in report_splits(cfg)), f"{args.audio_dir}/extra_splits.txt")
        mark_done(args.audio_dir, "synth", settings)
    for entry in summarise_rows(rows):
        print(json.dumps(entry))
    print(f"synthesis: {sum(len(r) for r in rows.values())} files in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
