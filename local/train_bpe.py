#!/usr/bin/env python3
"""Stage: sentencepiece BPE (unigram) model and token table from the training text.

    python local/train_bpe.py --manifest-dir data/manifests --prefix synth --train-split source_train \
        --lang-dir data/lang_bpe_500 --vocab-size 500

Reads the transcripts of ``--train-split`` (the training text only; never dev, test or
target text),
writes ``bpe.model``, ``tokens.txt`` and ``transcript_words.txt`` into ``--lang-dir``.
A vocabulary larger than the text supports is an error that names the largest size.
"""

import argparse
import time
from pathlib import Path


from speechadapt.data.bpe import prepare_lang_bpe
from speechadapt.data.manifests import manifest_paths, open_manifest
from speechadapt.data.prep_utils import comma_list, file_stamp, is_done, mark_done, setup_stage_logging
from speechadapt.utils.flags import parse_args


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest-dir", default="data/manifests")
    parser.add_argument("--prefix", required=True, help="corpus name in the manifest file names")
    parser.add_argument("--train-split", type=comma_list, required=True,
                        help="the split(s) whose text trains the model (comma-separated)")
    parser.add_argument("--lang-dir", required=True)
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--model-type", default="unigram", choices=("unigram", "bpe"))
    parser.add_argument("--force", action="store_true")
    return parser


def main(argv=None) -> None:
    setup_stage_logging()
    args = parse_args(get_parser(), argv, entry_point="train_bpe")
    start = time.time()
    sources = [manifest_paths(args.manifest_dir, split, args.prefix)["supervisions"] for split in args.train_split]
    for source in sources:
        if not source.is_file():
            raise FileNotFoundError(f"{source} does not exist: run the manifest stage first")
    settings = {"source": [file_stamp(source) for source in sources],
                "vocab_size": args.vocab_size, "model_type": args.model_type}
    if is_done(args.lang_dir, "bpe", settings) and not args.force:
        print(f"{args.lang_dir}: bpe model up to date")
        return
    texts = [s.text for source in sources for s in open_manifest(source)]
    model = prepare_lang_bpe(texts, args.lang_dir, args.vocab_size, args.model_type)
    mark_done(args.lang_dir, "bpe", settings)
    print(f"bpe: {model} ({args.vocab_size} pieces, {args.model_type}) from {len(texts)} "
          f"sentences in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
