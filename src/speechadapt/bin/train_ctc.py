"""Train a Zipformer-CTC model on fbank cuts (egs/synth stage 10).

    python -m speechadapt.bin.train_ctc --exp-dir exp/full/ctc --manifest-dir data/fbank \
        --lang-dir data/lang_bpe_500 --encoder-preset tiny --num-epochs 8 --max-duration 100

Torch's CTC loss (no k2), the shared training loop (ScaledAdam + Eden by default,
checkpoints, exact resume, running average, DDP with --world-size or torchrun).
``--schedule-updates`` rescales the Zipformer's regularisation schedules (written for
tens of thousands of batches) to the number of updates this run will make.
"""

import argparse
import json
import logging
from pathlib import Path
from typing import Dict, Tuple

import torch

from speechadapt.data.datamodule import AsrDataModule
from speechadapt.data.batch import batch_inputs
from speechadapt.decoding.ctc import load_bpe, texts_to_ids
from speechadapt.models.ctc import ZipformerCtc
from speechadapt.models.zipformer import get_preset, load_icefall_checkpoint, set_batch_count
from speechadapt.training.dist import cleanup_dist, launch, setup_dist
from speechadapt.training.loop import Trainer
from speechadapt.training.metrics import MetricsTracker
from speechadapt.training.options import TrainingConfig, add_training_arguments
from speechadapt.utils.args import str2bool
from speechadapt.utils.config import config_to_dict
from speechadapt.utils.env import get_env_info
from speechadapt.utils.io import atomic_write_text
from speechadapt.utils.log import setup_logger

# icefall's Zipformer schedules mostly end by ~20k batches.
ICEFALL_SCHEDULE_BATCHES = 20000.0


class CtcLoss:
    """compute_loss for the loop: summed CTC loss, frames = encoder output frames."""

    def __init__(self, sp):
        self.sp = sp

    def __call__(self, model, batch: Dict, is_training: bool) -> Tuple[torch.Tensor, MetricsTracker]:
        device = next(model.parameters()).device
        x, lens, texts, _ = batch_inputs(batch, device)
        targets = texts_to_ids(self.sp, texts)
        loss, frames = model.ctc_loss(x, lens, targets)
        info = MetricsTracker(unnormalised=["utterances"])
        info["frames"] = float(frames)
        info["utterances"] = float(x.size(0))
        info["loss"] = float(loss.detach())
        return loss, info


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    AsrDataModule.add_arguments(parser)
    add_training_arguments(parser)
    g = parser.add_argument_group("CTC model")
    g.add_argument("--lang-dir", required=True, help="icefall-style lang_bpe_N with bpe.model")
    g.add_argument("--encoder-preset", default="tiny", help="tiny, small, medium or large")
    g.add_argument("--init-from", default=None, help="icefall pretrained.pt / epoch-N.pt to start from")
    g.add_argument("--train-split", default="source_train")
    g.add_argument("--valid-split", default="source_dev")
    g.add_argument("--pad-invariant", type=str2bool, default=True,
                   help="mask padding in the front end and downsampling, so a batched utterance "
                        "decodes as it would alone (icefall's own model does not)")
    g.add_argument("--regularize", type=str2bool, default=True,
                   help="false: no scheduled dropout / layer skipping / feature masking in "
                        "training, and no warm-up floor on the bypass scales (short runs: "
                        "see bench/ctc_convergence.py)")
    g.add_argument("--schedule-updates", type=float, default=0.0,
                   help="expected number of updates; > 0 rescales the Zipformer regularisation "
                        "schedules to end within it (0: icefall's batch counts)")
    return parser


def save_model_config(exp_dir, model: ZipformerCtc) -> None:
    """exp_dir/model_config.json: what decoding needs to rebuild the model."""
    info = {"encoder": config_to_dict(model.config), "vocab_size": model.vocab_size, "blank_id": model.blank_id}
    atomic_write_text(json.dumps(info, indent=1) + "\n", Path(exp_dir) / "model_config.json")


def load_model_config(exp_dir) -> ZipformerCtc:
    """A freshly initialised ZipformerCtc of the shape recorded by ``save_model_config``."""
    path = Path(exp_dir) / "model_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: was {exp_dir} written by train_ctc?")
    info = json.loads(path.read_text())
    return ZipformerCtc(info["encoder"], vocab_size=info["vocab_size"], blank_id=info["blank_id"])


def build_model(args, vocab_size: int) -> ZipformerCtc:
    overrides = {"pad_invariant": args.pad_invariant, "regularize": args.regularize}
    if args.schedule_updates > 0:
        overrides["schedule_scale"] = ICEFALL_SCHEDULE_BATCHES / args.schedule_updates
    config = get_preset(args.encoder_preset, **overrides)
    model = ZipformerCtc(config, vocab_size=vocab_size)
    if args.init_from:
        load_icefall_checkpoint(args.init_from, model)
        logging.info(f"initialised from {args.init_from}")
    return model


def run(rank: int, world_size: int, args: argparse.Namespace) -> None:
    dist_info = setup_dist(rank, world_size)
    setup_logger(args.exp_dir, "train", dist_info.rank, dist_info.world_size)
    logging.info(f"environment: {get_env_info()}")
    logging.info(f"arguments: {vars(args)}")
    config = TrainingConfig.from_args(args)
    sp = load_bpe(args.lang_dir)
    torch.manual_seed(config.seed)  # same initial model on every rank
    model = build_model(args, sp.get_piece_size())
    logging.info(f"ZipformerCtc ({args.encoder_preset}): {sum(p.numel() for p in model.parameters()):,} parameters")
    if dist_info.is_main:
        save_model_config(args.exp_dir, model)

    dm = AsrDataModule(args)
    train_dl = dm.train_dataloaders(dm.load_cuts(args.train_split))
    valid_dl = dm.valid_dataloaders(dm.load_cuts(args.valid_split))
    trainer = Trainer(
        config, model, CtcLoss(sp), train_dl, valid_dl, dist_info,
        batch_hooks=[lambda t: set_batch_count(t.model, t.params["batch_idx_train"])],
    )
    params = trainer.fit()
    logging.info(f"done: best valid loss {params['best_valid_loss']:.4f} (epoch {params['best_valid_epoch']})")
    cleanup_dist()


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    if args.world_size > 1 and not args.find_unused_parameters:
        # Zipformer skips modules at random in training (icefall trains with this on).
        args.find_unused_parameters = True
    launch(run, args.world_size, args)


if __name__ == "__main__":
    main()
