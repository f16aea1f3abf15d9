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

from speechadapt.data.datamodule import AsrDataModule, DataConfig
from speechadapt.decoding.results import decode_dataloader
from speechadapt.decoding.scoring import compute_wer
from speechadapt.models.ctc import ZipformerCtc
from speechadapt.models.ctc_base import BpeTokenizer
from speechadapt.models.zipformer import get_preset
from speechadapt.training.optim import OptimizerConfig, build_optimizer
from speechadapt.training.schedulers import SchedulerConfig, build_scheduler
from speechadapt.utils.flags import add_dataclass_arguments, dataclass_from_args

SETTINGS = {"specaug+reg": (True, True), "specaug": (True, False), "reg": (False, True),
            "none": (False, False)}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, DataConfig, "data", defaults=dict(max_duration=100.0, num_workers=0,
                                                                     cuts_prefix="synth"))
    parser.add_argument("--train-split", default="source_train")
    parser.add_argument("--valid-split", default="source_dev")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--lang-dir", required=True)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--settings", default="none,specaug+reg", help=f"from {sorted(SETTINGS)}")
    parser.add_argument("--updates", type=int, default=500)
    parser.add_argument("--eval-every", type=int, default=125)
    parser.add_argument("--base-lr", type=float, default=0.04)
    parser.add_argument("--threads", type=int, default=1)
    return parser


@torch.no_grad()
def evaluate(model: ZipformerCtc, valid_dl) -> Dict[str, float]:
    model.eval()
    loss, frames = 0.0, 0
    for batch in valid_dl:
        batch_loss, info = model.compute_loss(batch)
        loss, frames = loss + float(batch_loss), frames + info["frames"]
    results, _ = decode_dataloader(model.transcribe, valid_dl)
    model.train()
    return {"valid_loss": loss / frames, "valid_wer": compute_wer(results)}


def run_setting(args, name: str, tokenizer, valid_dl) -> List[Dict[str, float]]:
    spec_aug, regularize = SETTINGS[name]
    args.enable_spec_aug = spec_aug
    dm = AsrDataModule(dataclass_from_args(DataConfig, args), seed=args.seed)
    torch.manual_seed(args.seed)  # same initial weights and SpecAugment draws per setting
    model = ZipformerCtc(get_preset(args.preset, regularize=regularize), tokenizer.vocab_size, tokenizer=tokenizer)
    optimizer = build_optimizer(model.named_parameters(), OptimizerConfig(base_lr=args.base_lr))
    scheduler = build_scheduler(optimizer, SchedulerConfig())
    model.train()
    curve, step, epoch, start = [], 0, 0, time.perf_counter()
    while step < args.updates:
        train_dl = dm.train_dataloaders(dm.load_cuts(args.train_split))
        train_dl.sampler.set_epoch(epoch)
        batches = 0
        for batch in train_dl:
            batches += 1
            model.set_batch_count(step)
            def loss_fn(grad_enabled=True):
                loss, info = model.compute_loss(batch)
                return loss / info["frames"]

            loss = optimizer.step(loss_fn)
            step += 1
            scheduler.step_batch(step)
            if step % args.eval_every == 0 or step == args.updates:
                point = {"updates": step, "train_loss": loss,
                         "seconds": round(time.perf_counter() - start, 1)}
                point.update(evaluate(model, valid_dl))
                curve.append(point)
            if step == args.updates:
                break
        if batches == 0:
            raise SystemExit("the training loader yielded no batch: lower --max-duration or --num-buckets")
        epoch += 1
    return curve


def main() -> None:
    args = get_parser().parse_args()
    torch.set_num_threads(args.threads)
    names = [s for s in args.settings.split(",") if s]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; choose from {sorted(SETTINGS)}")
    tokenizer = BpeTokenizer.from_lang_dir(args.lang_dir)
    dm = AsrDataModule(dataclass_from_args(DataConfig, args), seed=args.seed)
    valid_dl = dm.valid_dataloaders(dm.load_cuts(args.valid_split))
    report = {"preset": args.preset, "max_duration": args.max_duration, "base_lr": args.base_lr,
              "threads": args.threads, "curves": {}}
    for name in names:
        report["curves"][name] = run_setting(args, name, tokenizer, valid_dl)
    print(json.dumps(report))
    print(f"\n{'setting':<12} {'updates':>7} {'dev loss/frame':>15} {'dev WER %':>10} {'seconds':>8}")
    for name, curve in report["curves"].items():
        for p in curve:
            print(f"{name:<12} {p['updates']:>7} {p['valid_loss']:>15.3f} {p['valid_wer']:>10.2f} "
                  f"{p['seconds']:>8.1f}")


if __name__ == "__main__":
    main()
