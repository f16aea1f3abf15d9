"""Fine-tune a trained model on another domain, first-order or zeroth-order, for any model kind.

    python -m speechadapt.bin.finetune --source-exp-dir exp/ctc --checkpoint exp/ctc/epoch-8-avg-3.pt \\
        --exp-dir exp/ft/zo-asr-norms --optimizer zo-asr --params norms --base-lr 1e-4 --zo-eps 1e-3 \\
        --train-split target_adapt --valid-split target_dev --test-sets source_test,target_test \\
        --max-steps 400 --eval-every 50 --manifest-dir data/fbank --cuts-prefix synth

    python -m speechadapt.bin.finetune --model whisper --model-dir /models/whisper-large-v3 \\
        --optimizer adamw --lr-scales encoder=0.1 ...          # a Hugging Face model as the source

The source is an experiment directory (its model.json and the weights chosen by
--checkpoint / --epoch --avg ...), or ``--model KIND`` with that kind's flags (a local
Hugging Face directory; a Zipformer from an icefall checkpoint with --init-from).
``--params`` picks what is tuned (a group or a regex); ``--objective wer`` optimises
the expected WER of sampled hypotheses instead of the loss. Every optimiser of the
registry runs through the one Trainer (resume, DDP, checkpoints); zeroth-order steps
compute what is frozen once per batch. The dev set is decoded every --eval-every
updates (curve in exp_dir/dev_curve.jsonl, TensorBoard ``valid/wer``, best weights in
best.pt, the last in last.pt); the test sets are decoded with the best weights and
recorded in results.jsonl with the run's cost (updates, forward and backward passes,
wall time, peak memory of training and of inference on one training batch).
``--num-epochs 0`` records the source model as it is (zero-shot).
"""

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Dict, Sequence

import torch
from lhotse import CutSet

from speechadapt.adapt.finetune import (DevEvaluator, FinetuneOptions, hold_upstream, lr_scale_function, run_record,
                                        select_tuned)
from speechadapt.adapt.objectives import ExpectedWer, supports_expected_wer
from speechadapt.adapt.source import add_source_arguments, check_source, load_source
from speechadapt.data.datamodule import AsrDataModule, DataConfig, split_name
from speechadapt.data.prep_utils import comma_list
from speechadapt.data.text_check import check_transcripts
from speechadapt.decoding.results import Stopwatch, decode_dataloader, unseen_subset, write_decode_results
from speechadapt.models.interface import DecodeOptions
from speechadapt.models.registry import check_same_model, write_spec
from speechadapt.training.checkpoint import model_state_dict
from speechadapt.training.dist import cleanup_dist, launch, setup_dist
from speechadapt.training.loop import NonFiniteLossError, Trainer
from speechadapt.training.optim import OptimizerConfig
from speechadapt.training.options import TrainingConfig
from speechadapt.training.schedulers import SchedulerConfig
from speechadapt.training.state import fix_random_seed
from speechadapt.utils.flags import add_dataclass_arguments, dataclass_from_args, parse_args
from speechadapt.utils.io import atomic_save, atomic_write_text
from speechadapt.utils.log import setup_logger
from speechadapt.utils.memory import PeakMemory

# Adaptation runs are short: a step budget, no running average, decoding on the dev set.
TRAINING_DEFAULTS = dict(num_epochs=1000, average_period=0, save_every_n=0, valid_interval=0, log_interval=25)
OPTIMIZER_DEFAULTS = dict(optimizer="adamw", base_lr=1e-4)
# Adaptation sets are small: keep every cut (no dropped last batches), no SpecAugment.
DATA_DEFAULTS = dict(enable_spec_aug=False, drop_last=False)


def get_parser(tokens: Sequence[str] = ()) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(p, tokens)
    p.add_argument("--train-split", required=True, help="adaptation cuts (split name or path)")
    p.add_argument("--valid-split", default="", help="dev cuts decoded every --eval-every updates")
    p.add_argument("--test-sets", type=comma_list, default=[], help="decoded with the best weights at the end")
    p.add_argument("--results", type=Path, default=None, help="default: exp_dir/results.jsonl")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_dataclass_arguments(p, FinetuneOptions, "fine-tuning")
    add_dataclass_arguments(p, TrainingConfig, "training", defaults=TRAINING_DEFAULTS)
    add_dataclass_arguments(p, OptimizerConfig, "optimizer", defaults=OPTIMIZER_DEFAULTS)
    add_dataclass_arguments(p, SchedulerConfig, "learning-rate schedule", defaults=dict(scheduler="constant"))
    add_dataclass_arguments(p, DataConfig, "data", defaults=DATA_DEFAULTS)
    add_dataclass_arguments(p, DecodeOptions, "search")
    return p


def default_method(args, config: OptimizerConfig, options: FinetuneOptions) -> str:
    if options.method:
        return options.method
    if args.num_epochs == 0:
        return "zero-shot"
    name = config.optimizer + ("" if options.params == "all" else f"-{options.params}")
    return name + ("-wer" if options.objective == "wer" else "")


def inference_peak(model, loader, device) -> float:
    """Peak memory of inference over the adaptation batches (the reference for ZO's
    inference-level memory): the loss of every batch of one epoch, no autograd. The
    second of two passes counts: the first also fills the allocator's caches."""
    was_training = model.training
    model.eval()
    batches = 0
    for _ in range(2):
        with PeakMemory(device) as peak, torch.inference_mode():
            for batch in loader:
                model.compute_loss(batch)
                batches += 1
    model.train(was_training)
    if not batches:
        raise ValueError("the adaptation set yields no batch (too small for --max-duration with --drop-last true?)")
    return peak.mb


RUN_SETTINGS_FILE = "finetune_settings.json"
# What a resumed run may change: where and how fast it runs, what it reports, how long.
FREE_ON_RESUME = {"num_workers", "max_steps", "eval_every", "world_size"}


def run_settings(args, optim, options, data_config) -> dict:
    """The flags that make a run what it is (optimiser, tuned set, data and its transforms)."""
    settings = {**dataclasses.asdict(optim), **dataclasses.asdict(options), **dataclasses.asdict(data_config),
                "seed": args.seed, "train_split": args.train_split, "valid_split": args.valid_split}
    return json.loads(json.dumps({k: v for k, v in settings.items() if k not in FREE_ON_RESUME}, default=str))


def check_same_run(exp_dir, settings: dict) -> None:
    """A resumed run must be the run it continues: another optimiser, rate, augmentation
    or split would silently continue one run with the settings of another."""
    path = Path(exp_dir) / RUN_SETTINGS_FILE
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    differ = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
    if differ:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}" for k in differ)
        raise ValueError(f"{exp_dir} holds a run with other settings ({details}); resume it with its own flags, "
                         f"or start this one in a fresh --exp-dir (or with --start-epoch 1)")


def run(rank: int, world_size: int, args: argparse.Namespace) -> None:
    dist_info = setup_dist(rank, world_size)
    setup_logger(args.exp_dir, "finetune", dist_info.rank, dist_info.world_size)
    training = dataclass_from_args(TrainingConfig, args)
    optim = dataclass_from_args(OptimizerConfig, args)
    options = dataclass_from_args(FinetuneOptions, args)
    decode_opts = dataclass_from_args(DecodeOptions, args)
    fix_random_seed(training.seed)
    model, source = load_source(args, dist_info.device)
    spec = model.spec()
    adapters_only = spec["kind"] == "llm_asr"  # its checkpoints hold the trainable parts (LoRA ...)
    save_keys = list(model_state_dict(model, trainable_only=adapters_only))
    training.save_trainable_only = adapters_only
    tuned = select_tuned(model, options.params, options.freeze_frontend) if training.num_epochs > 0 else []
    objective = None
    if options.objective == "wer":
        if not supports_expected_wer(model):
            raise ValueError(f"--objective wer: {type(model).__name__} cannot sample and score hypotheses")
        objective = ExpectedWer(options.wer_samples, options.wer_temperature)
    data_config = dataclass_from_args(DataConfig, args)
    data = AsrDataModule(data_config, model.input_kind, seed=training.seed)
    train_cuts = check_transcripts(data.load_cuts(args.train_split), model.unknown_characters,
                                   data_config.max_bad_transcripts, args.train_split)
    train_dl = data.train_dataloaders(train_cuts, world_size=dist_info.world_size, rank=dist_info.rank)
    dev = data.test_dataloaders(dev_cuts(data, args.valid_split, options.dev_subset)) if args.valid_split else None
    trainer = Trainer(training, model, train_dl, None, dist_info, optimizer_config=optim,
                      scheduler_config=dataclass_from_args(SchedulerConfig, args), objective=objective,
                      lr_scale_of=lr_scale_function(model, options.lr_scales))
    held_steps = hold_upstream(model, trainer, tuned, options.upstream_freeze_ratio, training.max_steps)
    # after the Trainer: building the optimiser imports ~70 MB of modules, not working memory
    peak_infer = inference_peak(model, train_dl, dist_info.device) if training.num_epochs > 0 else 0.0
    evaluator = DevEvaluator(model, dev, training.exp_dir, options.eval_every, decode_opts, save_keys,
                             dist_info.is_main, feedback=options)
    evaluator.held_steps = held_steps
    settings = run_settings(args, optim, options, data_config)
    if trainer.resuming:  # the run's own source and settings, not one retrained or changed since
        check_same_model(training.exp_dir, spec)
        check_same_run(training.exp_dir, settings)
    if dist_info.is_main:
        write_spec(training.exp_dir, spec)
        atomic_write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n",
                          Path(training.exp_dir) / RUN_SETTINGS_FILE)
        if dev is not None and not trainer.resuming:
            evaluator.baseline(trainer)
    if dev is not None:
        trainer.step_hooks.append(evaluator)
    diverged = None
    with PeakMemory(dist_info.device) as peak_train:
        evaluator.memory = peak_train
        start = time.time()
        try:
            trainer.fit()
        except NonFiniteLossError as e:  # a diverged run is a result (of its rate): keep what dev chose
            diverged = f"{e} at update {trainer.params['batch_idx_train']}"
            logging.warning(f"the run diverged ({diverged}); the test sets are decoded with the best dev weights")
        train_s = time.time() - start
    if dist_info.is_main:
        finish(args, trainer, evaluator, model, save_keys, source, optim, options, decode_opts, data, tuned,
               train_s, peak_train, peak_infer, diverged)
    cleanup_dist()


def finish(args, trainer, evaluator, model, save_keys, source, optim, options, decode_opts, data, tuned,
           train_s, peak_train, peak_infer, diverged=None) -> Dict[str, float]:
    """The last and best weights, and the test sets decoded with the best."""
    opt = trainer.optimizer
    steps = int(trainer.params["batch_idx_train"])
    exp_dir = Path(args.exp_dir)
    if evaluator.loader is not None and (not evaluator.curve or evaluator.curve[-1]["step"] != steps):
        evaluator.evaluate(steps, opt.num_forwards, opt.num_backwards)
    atomic_save({"model": evaluator.weights(), "step": steps}, exp_dir / "last.pt")
    weights = "last"
    if (exp_dir / "best.pt").is_file():
        best = torch.load(exp_dir / "best.pt", weights_only=True)
        model.load_state_dict(best["model"], strict=False)
        weights = f"best-step-{best['step']}"
    model.eval()
    extra = run_record(optim.optimizer if args.num_epochs else "none", sum(p.numel() for _, p in tuned), steps,
                       opt.num_forwards, opt.num_backwards, train_s, peak_train.mb if steps else 0.0, peak_infer,
                       peak_train.method, dict(source=source, params=options.params, objective=options.objective,
                                             base_lr=optim.base_lr,  # eps and q as run (a preset's when unset)
                                             zo_eps=getattr(opt, "eps", optim.zo_eps),
                                             zo_num_queries=getattr(opt, "num_queries", optim.zo_num_queries),
                                             best_dev_wer=None if evaluator.best_step < 0 else evaluator.best_wer,
                                             best_step=evaluator.best_step, diverged=diverged,
                                             **stability_record(trainer, evaluator, options)),
                       family=options.family)
    method = default_method(args, optim, options)
    wers: Dict[str, float] = {}
    for test_set in args.test_sets:
        cuts = data.load_cuts(test_set)
        with Stopwatch() as clock:
            results, audio_s = decode_dataloader(lambda b: model.transcribe(b, decode_opts), data.test_dataloaders(cuts),
                                                 desc=f"decoding {split_name(test_set)}",
                                                 normalize=decode_opts.normalizer(model))
        wers.update(write_decode_results(results, exp_dir, split_name(test_set), decode_opts.key(weights), method,
                                         args.results, clock.seconds, audio_s, extra=extra, subsets=unseen_subset(cuts),
                                         model_name=f"{exp_dir.parent.name}/{exp_dir.name}/{decode_opts.key(weights)}"))
    logging.info(f"{method}: {wers} after {steps} updates ({opt.num_forwards} forwards, {train_s:.0f} s)")
    return wers


def dev_cuts(data: AsrDataModule, split: str, subset: int):
    """The dev cuts, or the first ``subset`` of them by id (the same ones at every evaluation)."""
    cuts = data.load_cuts(split)
    if not subset:
        return cuts
    chosen = sorted(cuts, key=lambda c: c.id)[:subset]
    logging.info(f"dev evaluations on {len(chosen)} cuts of {split} (--dev-subset {subset})")
    return CutSet.from_cuts(chosen)


def stability_record(trainer, evaluator, options: FinetuneOptions) -> Dict:
    """What stable fine-tuning and the metric-driven rate did, for the record."""
    out = {}
    if options.freeze_frontend or options.upstream_freeze_ratio:
        out.update(freeze_frontend=options.freeze_frontend, upstream_held_steps=getattr(evaluator, "held_steps", 0))
    if options.lr_feedback:
        out.update(lr_feedback=dict(factor=options.lr_feedback_factor, delta=options.lr_feedback_delta,
                                    patience=options.lr_feedback_patience, dev_subset=options.dev_subset,
                                    final_scale=trainer.scheduler.feedback["scale"]))
    return out


def preflight(args: argparse.Namespace) -> None:
    """Fail before spawning anything, with one message, when an input is missing."""
    try:
        if args.lr_feedback and (not args.valid_split or args.eval_every <= 0):
            raise ValueError("--lr-feedback true decides on dev evaluations: give --valid-split and --eval-every N")
        check_source(args)
        AsrDataModule(dataclass_from_args(DataConfig, args)).require(args.train_split, args.valid_split,
                                                                      *args.test_sets)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


def main(argv=None) -> None:
    args = parse_args(get_parser, argv, entry_point="finetune")
    preflight(args)
    launch(run, args.world_size, args)


if __name__ == "__main__":
    main()
