#!/usr/bin/env python3
"""How fast Zipformer-CTC leaves its all-blank plateau, with and without regularisation.

Trains the same initial model (one seed) for --updates ScaledAdam + Eden steps on the
same cut order, once per setting, and reports dev loss per frame and greedy WER every
--eval-every updates. Settings (comma-separated):

  specaug+reg  SpecAugment (time warp 80, 10 frame masks, 2 x 27 mel bins) and the
               Zipformer's dropout / layer-skipping schedules (icefall's defaults)
  specaug      SpecAugment only (--regularize false)
  reg          regularisation schedules only (no SpecAugment)
  none         neither (the synth recipe's choice)

Prints one JSON object, then a table. Run from a recipe directory after prepare.sh:

    cd egs/synth && PYTHONPATH=../../src OMP_NUM_THREADS=1 python3 ../../bench/ctc_convergence.py \
        --manifest-dir data/fbank --lang-dir data/lang_bpe_500 --updates 500 --settings none,specaug+reg
"""

import argparse
import json
import time
from typing import Dict, List

import torch

from speechadapt.data.batch import batch_inputs
from speechadapt.data.datamodule import AsrDataModule
from speechadapt.decoding.ctc import ctc_greedy_texts, load_bpe, texts_to_ids
from speechadapt.decoding.results import decode_dataloader
from speechadapt.decoding.scoring import compute_wer
from speechadapt.models.ctc import ZipformerCtc
from speechadapt.models.zipformer import get_preset, set_batch_count
from speechadapt.training.optim import build_optimizer, build_scheduler

SETTINGS = {"specaug+reg": (True, True), "specaug": (True, False), "reg": (False, True),
            "none": (False, False)}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    AsrDataModule.add_arguments(parser)
    parser.set_defaults(max_duration=100.0, num_workers=0)
    parser.add_argument("--lang-dir", required=True)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--settings", default="none,specaug+reg", help=f"from {sorted(SETTINGS)}")
    parser.add_argument("--updates", type=int, default=500)
    parser.add_argument("--eval-every", type=int, default=125)
    parser.add_argument("--base-lr", type=float, default=0.04)
    parser.add_argument("--threads", type=int, default=1)
    return parser


@torch.no_grad()
def evaluate(model: ZipformerCtc, sp, valid_dl) -> Dict[str, float]:
    model.eval()
    loss, frames = 0.0, 0
    for batch in valid_dl:
        x, lens, texts, _ = batch_inputs(batch, "cpu")
        batch_loss, batch_frames = model.ctc_loss(x, lens, texts_to_ids(sp, texts))
        loss, frames = loss + float(batch_loss), frames + batch_frames
    results, _ = decode_dataloader(ctc_greedy_texts(model, sp), valid_dl, torch.device("cpu"))
    model.train()
    return {"valid_loss": loss / frames, "valid_wer": compute_wer(results)}


def run_setting(args, name: str, sp, valid_dl) -> List[Dict[str, float]]:
    spec_aug, regularize = SETTINGS[name]
    args.enable_spec_aug = spec_aug
    dm = AsrDataModule(args)
    torch.manual_seed(args.seed)  # same initial weights and SpecAugment draws per setting
    model = ZipformerCtc(get_preset(args.preset, regularize=regularize), sp.get_piece_size())
    optimizer = build_optimizer(model.parameters(), "scaled_adam", args.base_lr)
    scheduler = build_scheduler(optimizer, "eden")
    model.train()
    curve, step, epoch, start = [], 0, 0, time.perf_counter()
    while step < args.updates:
        train_dl = dm.train_dataloaders(dm.load_cuts("source_train"))
        train_dl.sampler.set_epoch(epoch)
        for batch in train_dl:
            set_batch_count(model, step)
            x, lens, texts, _ = batch_inputs(batch, "cpu")
            loss, frames = model.ctc_loss(x, lens, texts_to_ids(sp, texts))
            (loss / frames).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            scheduler.step_batch(step)
            if step % args.eval_every == 0 or step == args.updates:
                point = {"updates": step, "train_loss": loss.item() / frames,
                         "seconds": round(time.perf_counter() - start, 1)}
                point.update(evaluate(model, sp, valid_dl))
                curve.append(point)
            if step == args.updates:
                break
        epoch += 1
    return curve


def main() -> None:
    args = get_parser().parse_args()
    torch.set_num_threads(args.threads)
    names = [s for s in args.settings.split(",") if s]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; choose from {sorted(SETTINGS)}")
    sp = load_bpe(args.lang_dir)
    dm = AsrDataModule(args)
    valid_dl = dm.valid_dataloaders(dm.load_cuts("source_dev"))
    report = {"preset": args.preset, "max_duration": args.max_duration, "base_lr": args.base_lr,
              "threads": args.threads, "curves": {}}
    for name in names:
        report["curves"][name] = run_setting(args, name, sp, valid_dl)
    print(json.dumps(report))
    print(f"\n{'setting':<12} {'updates':>7} {'dev loss/frame':>15} {'dev WER %':>10} {'seconds':>8}")
    for name, curve in report["curves"].items():
        for p in curve:
            print(f"{name:<12} {p['updates']:>7} {p['valid_loss']:>15.3f} {p['valid_wer']:>10.2f} "
                  f"{p['seconds']:>8.1f}")


if __name__ == "__main__":
    main()
