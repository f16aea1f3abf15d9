"""Train LLM-ASR (frozen Zipformer(s) + projector(s) + Qwen2 with LoRA), or MoSE with
several --encoder-ckpt files, through the shared training loop.

    python -m speechadapt.bin.train_llm_asr \\
        --exp-dir exp/llm_asr --llm-dir exp/tiny_qwen2 \\
        --encoder-ckpt exp/ctc/epoch-20-avg-5.pt --encoder-preset tiny \\
        --manifest-dir data/fbank --train-split source_train --valid-split source_dev \\
        --num-epochs 10 --max-duration 200

    # MoSE with two encoders, each slot dropped with p = 0.3 in training:
    ... --encoder-ckpt exp/ctc/epoch-20-avg-5.pt exp/ctc_seed2/epoch-20-avg-5.pt \\
        --mose-slot-dropout 0.3

Checkpoints (exp_dir/epoch-N.pt, checkpoint-B.pt) hold only the trainable parameters
(projectors, LoRA, the speech-token rows) and buffers: the encoders come from
--encoder-ckpt and the LLM from --llm-dir again at decoding time. Resume with
--start-epoch/--start-batch; --world-size N spawns N DDP processes (or use torchrun).
"""

import argparse
import logging
from typing import Any, Sequence, Tuple

import torch

from speechadapt.data.batch import batch_inputs
from speechadapt.models.llm_asr_build import add_llm_asr_arguments, build_llm_asr_model, llm_asr_config_from_args
from speechadapt.training.dist import cleanup_dist, launch, setup_dist
from speechadapt.training.metrics import MetricsTracker
from speechadapt.training.options import TrainingConfig, add_training_arguments
from speechadapt.utils.config import config_to_dict
from speechadapt.utils.log import setup_logger

# The loop's defaults suit Zipformer training from scratch; LoRA adaptation wants
# AdamW at a small rate (the LibriSpeech recipe uses 1e-4), and adapter-only files.
TRAINING_DEFAULTS = dict(optimizer="adamw", base_lr=1e-4, scheduler="eden", warmup_batches=100.0,
                         save_trainable_only=True, grad_clip=5.0, max_duration=200.0)


class LlmAsrLoss:
    """compute_loss for the shared loop: summed token cross-entropy, normalised by the
    number of label tokens (stored as the tracker's "frames")."""

    def __call__(self, model: torch.nn.Module, batch: Any, is_training: bool) -> Tuple[torch.Tensor, MetricsTracker]:
        device = next(p.device for p in model.parameters())
        x, lens, texts, _ = batch_inputs(batch, device)
        out = model(x, lens, texts)
        info = MetricsTracker(unnormalised=["utterances"])
        info["frames"] = float(out.num_tokens)
        info["loss"] = float(out.loss.detach())
        info["acc"] = float(out.num_correct)
        info["utterances"] = float(len(texts))
        return out.loss, info


def add_data_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from speechadapt.data.datamodule import AsrDataModule

    AsrDataModule.add_arguments(parser)
    g = parser.add_argument_group("LLM-ASR data")
    g.add_argument("--train-split", default="source_train", help="<manifest-dir>/synth_cuts_<split>.jsonl.gz")
    g.add_argument("--valid-split", default="source_dev", help="empty: no validation")
    return parser


def make_dataloaders(args: argparse.Namespace, rank: int, world_size: int):
    from speechadapt.data.datamodule import AsrDataModule

    data = AsrDataModule(args)
    train_dl = data.train_dataloaders(data.load_cuts(args.train_split), world_size=world_size, rank=rank)
    valid_dl = None
    if args.valid_split:
        valid_dl = data.valid_dataloaders(data.load_cuts(args.valid_split), world_size=world_size, rank=rank)
    return train_dl, valid_dl


def get_parser() -> argparse.ArgumentParser:
    # --max-duration is both a training option and a datamodule option: one flag.
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     conflict_handler="resolve")
    add_training_arguments(parser)
    add_llm_asr_arguments(parser)
    add_data_arguments(parser)
    parser.set_defaults(**TRAINING_DEFAULTS)
    return parser


def model_params(args: argparse.Namespace, config) -> dict:
    """What decoding needs to rebuild the model; stored in every checkpoint's params."""
    return {
        "llm_asr_config": config_to_dict(config),
        "llm_dir": str(args.llm_dir),
        "encoder_ckpts": [str(p) for p in args.encoder_ckpt],
        "encoder_presets": list(args.encoder_preset),
    }


def run(rank: int, world_size: int, args: argparse.Namespace) -> None:
    from speechadapt.training.loop import Trainer
    from speechadapt.training.state import fix_random_seed

    dist_info = setup_dist(rank, world_size)
    setup_logger(args.exp_dir, "train-llm-asr", dist_info.rank, dist_info.world_size)
    training = TrainingConfig.from_args(args)
    config = llm_asr_config_from_args(args)
    fix_random_seed(training.seed)  # identical projector/LoRA initialisation on every rank
    model = build_llm_asr_model(args.llm_dir, args.encoder_ckpt, args.encoder_preset, config,
                                device=dist_info.device, dtype=args.llm_dtype,
                                pad_invariant=args.encoder_pad_invariant)
    train_dl, valid_dl = make_dataloaders(args, dist_info.rank, dist_info.world_size)
    trainer = Trainer(training, model, LlmAsrLoss(), train_dl, valid_dl, dist_info)
    trainer.params.update(model_params(args, config))
    params = trainer.fit()
    logging.info(f"done: best valid loss {params['best_valid_loss']:.4f} (epoch {params['best_valid_epoch']})")
    cleanup_dist()


def check_inputs(args: argparse.Namespace) -> None:
    """Fail before spawning anything, with one message, when a model file is missing."""
    from speechadapt.models.hf.loading import ModelDirError, check_model_dir

    try:
        check_model_dir(args.llm_dir, "qwen2")
    except ModelDirError as e:
        raise SystemExit(f"error: {e}") from None
    missing = [str(p) for p in args.encoder_ckpt if not p.is_file()]
    if missing:
        raise SystemExit(f"error: --encoder-ckpt file(s) not found: {', '.join(missing)} "
                         f"(train the Zipformer-CTC first and average it, e.g. exp/ctc/epoch-E-avg-A.pt)")


def main(argv: Sequence[str] = None) -> None:
    args = get_parser().parse_args(argv)
    check_inputs(args)
    launch(run, args.world_size, args)


if __name__ == "__main__":
    torch.set_num_threads(1)  # tiny models: more threads only contend on shared CPUs
    main()
