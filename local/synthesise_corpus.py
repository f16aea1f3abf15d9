#!/usr/bin/env python3
"""Stage: synthesise the synthetic corpus (audio + per-split metadata jsonl).

    python local/synthesise_corpus.py --config conf/full.yaml --audio-dir data/audio --num-jobs 2

Sizes, voices, rate/pitch ranges and the target noise come from the ``corpus:``
section of the config; any of them can be overridden by a flag
(``--num-source-train 200``, ``--target-snr-db 20,30`` ...). Skipped when a previous
run finished with exactly the same settings (done marker in the audio dir).
"""

import argparse
import dataclasses
import json
import logging
import time

from speechadapt.data.prep_utils import (add_dataclass_overrides, apply_overrides,
                                         dataclass_from_mapping, is_done, load_yaml_section,
                                         mark_done, read_jsonl, setup_stage_logging)
from speechadapt.data.synth import ALL_SPLITS, NOISE_SPLIT, CorpusConfig, prepare_corpus, summarise_rows


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML file with a 'corpus:' section")
    parser.add_argument("--audio-dir", default="data/audio")
    parser.add_argument("--num-jobs", type=int, default=2)
    parser.add_argument("--force", action="store_true", help="re-synthesise even if done")
    add_dataclass_overrides(parser, CorpusConfig)
    return parser


def main() -> None:
    setup_stage_logging()
    args = get_parser().parse_args()
    values = apply_overrides(CorpusConfig, load_yaml_section(args.config, "corpus"), args)
    cfg = dataclass_from_mapping(CorpusConfig, values, source=args.config or "flags")
    cfg.validate()
    settings = dataclasses.asdict(cfg)
    start = time.time()
    if is_done(args.audio_dir, "synth", settings) and not args.force:
        logging.info("%s: corpus already synthesised with these settings; skipping", args.audio_dir)
        rows = {s: read_jsonl(f"{args.audio_dir}/{s}.jsonl") for s in ALL_SPLITS + (NOISE_SPLIT,)}
    else:
        rows = prepare_corpus(cfg, args.audio_dir, args.num_jobs)
        mark_done(args.audio_dir, "synth", settings)
    for entry in summarise_rows(rows):
        print(json.dumps(entry))
    print(f"synthesis: {sum(len(r) for r in rows.values())} files in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
