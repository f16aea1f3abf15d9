"""Train any model kind of the registry through the one training loop.

    python -m speechadapt.bin.train --model zipformer_ctc --exp-dir exp/ctc \\
        --lang-dir data/lang_bpe_500 --manifest-dir data/fbank --cuts-prefix synth \\
        --train-split source_train --valid-split source_dev --num-epochs 8 --max-duration 100

    python -m speechadapt.bin.train --config conf/llm_asr.yaml --exp-dir exp/llm_asr \\
        --llm-dir exp/tiny_qwen2 --encoder-ckpt exp/ctc/epoch-8-avg-3.pt ...

    python -m speechadapt.bin.train --model llm_asr --help     # the kind's own flags

Kinds (``--model``): zipformer_ctc, llm_asr (several --encoder-ckpt = MoSE), hf_ctc
(wav2vec2 / HuBERT), whisper. Each brings training defaults that suit it (LLM-ASR:
AdamW 1e-4, adapter-only checkpoints); --config and the command line win over them.
Any optimiser of the registry works, first-order or zeroth-order (``--optimizer
mezo``). The model's spec goes to exp_dir/model.json, from which decode, transcribe
and the adaptation stages rebuild it. Resume with --start-epoch/--start-batch;
--world-size N spawns N DDP processes (or run under torchrun).
"""

import argparse
import logging
from typing import Sequence

from speechadapt.data.datamodule import AsrDataModule, DataConfig
from speechadapt.data.text_check import check_transcripts
from speechadapt.models.registry import MODEL_KINDS, check_same_model, get_kind, write_spec
from speechadapt.training.dist import cleanup_dist, launch, setup_dist
from speechadapt.training.loop import Trainer
from speechadapt.training.optim import OptimizerConfig
from speechadapt.training.options import TrainingConfig
from speechadapt.training.schedulers import SchedulerConfig
from speechadapt.training.state import fix_random_seed
from speechadapt.utils.env import get_env_info
from speechadapt.utils.flags import add_dataclass_arguments, dataclass_from_args, find_flag_value, parse_args
from speechadapt.utils.log import setup_logger


def get_parser(tokens: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The flags; those of the model kind named by ``--model`` in ``tokens`` included."""
    kind = find_flag_value(list(tokens), "--model")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = "; ".join(f"{k.name}: {k.help}" for k in MODEL_KINDS.values())
    parser.add_argument("--model", required=True, choices=sorted(MODEL_KINDS),
                        help=f"the model kind ({kinds}); give it to see the kind's flags")
    parser.add_argument("--train-split", required=True,
                        help="training cuts: a split name (<manifest-dir>/<prefix>_cuts_<name>.jsonl.gz) or a path")
    parser.add_argument("--valid-split", default="", help="validation cuts (name or path); empty: none")
    add_dataclass_arguments(parser, TrainingConfig, "training")
    add_dataclass_arguments(parser, OptimizerConfig, "optimizer")
    add_dataclass_arguments(parser, SchedulerConfig, "learning-rate schedule")
    add_dataclass_arguments(parser, DataConfig, "data")
    if kind in MODEL_KINDS:
        add_dataclass_arguments(parser, MODEL_KINDS[kind].options(), f"model ({kind})")
        parser.set_defaults(**MODEL_KINDS[kind].training_defaults)
    return parser


def run(rank: int, world_size: int, args: argparse.Namespace) -> None:
    dist_info = setup_dist(rank, world_size)
    setup_logger(args.exp_dir, "train", dist_info.rank, dist_info.world_size)
    logging.info(f"environment: {get_env_info()}")
    logging.info(f"arguments: {vars(args)}")
    kind = get_kind(args.model)
    training = dataclass_from_args(TrainingConfig, args)
    fix_random_seed(training.seed)  # the same initial model on every rank
    model = kind.build(dataclass_from_args(kind.options(), args), dist_info.device)
    logging.info(f"{type(model).__name__}: {sum(p.numel() for p in model.parameters()):,} parameters, "
                 f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,} trainable")
    spec = model.spec()
    data_config = dataclass_from_args(DataConfig, args)
    data = AsrDataModule(data_config, model.input_kind, seed=training.seed)

    def checked_cuts(name, max_bad):
        return check_transcripts(data.load_cuts(name), model.unknown_characters, max_bad, name)

    store = keep_frozen_outputs(model, training, data_config)
    train_dl = data.train_dataloaders(checked_cuts(args.train_split, data_config.max_bad_transcripts),
                                      world_size=dist_info.world_size, rank=dist_info.rank)
    valid_dl = None
    if args.valid_split:  # held-out text may hold what the training text lacks: a warning only
        valid_dl = data.valid_dataloaders(checked_cuts(args.valid_split, 1.0), world_size=dist_info.world_size,
                                          rank=dist_info.rank)
    trainer = Trainer(training, model, train_dl, valid_dl, dist_info,
                      optimizer_config=dataclass_from_args(OptimizerConfig, args),
                      scheduler_config=dataclass_from_args(SchedulerConfig, args))
    if trainer.resuming:
        check_same_model(training.exp_dir, spec)
    if dist_info.is_main:
        write_spec(training.exp_dir, spec)
    trainer.params["model_spec"] = spec
    params = trainer.fit()
    if store is not None:
        logging.info(f"frozen-output store: {store.summary()}")
    logging.info(f"done: best valid loss {params['best_valid_loss']:.4f} (epoch {params['best_valid_epoch']})")
    cleanup_dist()


def keep_frozen_outputs(model, training: TrainingConfig, data_config: DataConfig):
    """Turn on the model's store of frozen encoder outputs when it has one, the budget
    allows it and nothing augments the input (else a stored output would be stale)."""
    if not hasattr(model, "keep_frozen_outputs") or training.frozen_output_store_gb <= 0:
        return None
    augmented = data_config.input_augmentation_flags()
    if augmented:
        logging.info(f"frozen encoder outputs recomputed every batch: the input is augmented ({', '.join(augmented)})")
        return None
    logging.info(f"frozen encoder outputs kept across epochs (up to {training.frozen_output_store_gb:g} GiB)")
    return model.keep_frozen_outputs(int(training.frozen_output_store_gb * 2**30))


def preflight(args: argparse.Namespace) -> None:
    """Fail before spawning anything, with one message, when an input is missing."""
    kind = get_kind(args.model)
    try:
        kind.check(dataclass_from_args(kind.options(), args))
        AsrDataModule(dataclass_from_args(DataConfig, args)).require(args.train_split, args.valid_split)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


def main(argv=None) -> None:
    args = parse_args(get_parser, argv, entry_point="train")
    preflight(args)
    launch(run, args.world_size, args)


if __name__ == "__main__":
    main()
