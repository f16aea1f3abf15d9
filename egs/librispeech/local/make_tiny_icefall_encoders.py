#!/usr/bin/env python3
"""Smoke-run stand-ins for icefall's published Zipformer checkpoints: tiny, random weights.

    python3 local/make_tiny_icefall_encoders.py --out-dir exp/smoke/icefall \
        --names transducer,cr-ctc,cr-ctc-aed,transducer-large

Each ``<out-dir>/<name>/exp/pretrained.pt`` is laid out as icefall's ``export.py`` writes
it, ``{"model": state_dict}`` with the encoder (``encoder_embed.*``, ``encoder.*``) and
the heads of the model type (transducer ``decoder.*`` / ``joiner.*``, ``ctc_output.*``,
an attention decoder's ``attention_decoder.*``), so the recipe's loader is exercised on
the keys it must pick out and those it must ignore. Only the tiny preset's shapes; one
seed per checkpoint.
"""

import argparse
from pathlib import Path

import torch

from speechadapt.models.ctc import ZipformerCtc
from speechadapt.models.zipformer import get_preset
from speechadapt.utils.io import atomic_save

HEADS = {  # extra keys of each model type, beside the encoder: (name, shape)
    "transducer": [("decoder.embedding.weight", (500, 64)), ("joiner.output_linear.weight", (500, 64))],
    "cr-ctc": [],  # the CTC head comes with the encoder below
    "cr-ctc-aed": [("attention_decoder.decoder.embed.weight", (500, 64))],
}


def heads_of(name: str):
    for kind in sorted(HEADS, key=len, reverse=True):
        if name.startswith(kind):
            return HEADS[kind]
    return HEADS["transducer"]


def write_checkpoint(out: Path, name: str, seed: int, vocab_size: int = 500) -> Path:
    torch.manual_seed(seed)
    model = ZipformerCtc(get_preset("tiny"), vocab_size)
    state = dict(model.state_dict())
    for key, shape in heads_of(name):
        state[key] = torch.randn(shape) * 0.02
    path = out / name / "exp" / "pretrained.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"model": state}, path)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--names", default="transducer,cr-ctc,cr-ctc-aed,transducer-large")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for i, name in enumerate(n.strip() for n in args.names.split(",") if n.strip()):
        print(write_checkpoint(args.out_dir, name, args.seed + i))


if __name__ == "__main__":
    main()
