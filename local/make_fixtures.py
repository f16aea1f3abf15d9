#!/usr/bin/env python3
"""Write tiny offline Hugging Face checkpoints (random weights) for tests and the synth recipe.

    python local/make_fixtures.py --out-dir exp/hf_fixtures \
        [--text data/lang/text.txt] [--which qwen2,whisper,wav2vec2,hubert]

Each model goes to OUT_DIR/<name>/ laid out like a downloaded checkpoint, so the
recipes load it with --llm-dir / --whisper-dir / --model-dir as they would a real one.
The Qwen2 and Whisper tokenizers are trained on --text (one sentence per line, or
Kaldi ``utt-id words...`` lines with --text-has-ids true); without it, on a small
built-in list of sentences.
"""

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

from speechadapt.models.hf.fixtures import WHISPER_PRESETS, make_tiny_ctc, make_tiny_qwen2, make_tiny_whisper
from speechadapt.utils.args import str2bool

KINDS = ("qwen2", "whisper", "wav2vec2", "hubert")


def read_texts(path: Path, has_ids: bool) -> List[str]:
    if not path.is_file():
        raise FileNotFoundError(f"no such text file: {path}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if has_ids:
        lines = [parts[1] for parts in (line.split(maxsplit=1) for line in lines) if len(parts) == 2]
    if not lines:
        raise ValueError(f"{path} holds no text")
    return lines


def parse_which(value: str) -> List[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(names) - set(KINDS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--which takes a comma list of {','.join(KINDS)}; got {value!r}")
    return names


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--text", type=Path, default=None, help="tokenizer training text (default: built-in sentences)")
    p.add_argument("--text-has-ids", type=str2bool, default=False, help="--text lines start with an utterance id")
    p.add_argument("--which", type=parse_which, default=list(KINDS), help="comma list of " + ",".join(KINDS))
    p.add_argument("--qwen2-vocab-size", type=int, default=512, help="BPE size of the Qwen2 tokenizer")
    p.add_argument("--whisper-preset", choices=sorted(WHISPER_PRESETS), default="test")
    p.add_argument("--seed", type=int, default=0)
    return p


def make_one(kind: str, out_dir: Path, texts: Optional[List[str]], args) -> Path:
    if kind == "qwen2":
        return make_tiny_qwen2(out_dir, texts, tokenizer_vocab_size=args.qwen2_vocab_size, seed=args.seed)
    if kind == "whisper":
        return make_tiny_whisper(out_dir, texts, preset=args.whisper_preset, seed=args.seed)
    return make_tiny_ctc(out_dir, kind=kind, seed=args.seed)


def main(argv=None) -> dict:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    texts = read_texts(args.text, args.text_has_ids) if args.text is not None else None
    written = {kind: str(make_one(kind, args.out_dir / kind, texts, args)) for kind in args.which}
    print(json.dumps(written, indent=1))
    return written


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
