"""The training loop's own settings (icefall's flag names).

Flags come from the fields (``add_dataclass_arguments(parser, TrainingConfig)``); the
optimiser's and the schedule's are :class:`speechadapt.training.optim.OptimizerConfig`
and :class:`speechadapt.training.schedulers.SchedulerConfig`, the data's
:class:`speechadapt.data.datamodule.DataConfig`: each flag has one owner.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import List, Union


@dataclass
class TrainingConfig:
    exp_dir: str = field(default="exp", metadata={"help": "checkpoints, logs, tensorboard, model.json"})
    num_epochs: int = 10
    start_epoch: Union[int, str] = field(default=1, metadata={
        "type": "int_or_auto",
        "help": "resume from exp-dir/epoch-(N-1).pt when > 1; 'auto': from the newest checkpoint, if any"})
    start_batch: int = field(default=0, metadata={
        "help": "resume from exp-dir/checkpoint-B.pt when > 0 (overrides --start-epoch)"})
    seed: int = field(default=42, metadata={"help": "model initialisation, data order, augmentation"})
    world_size: int = field(default=1, metadata={"help": "processes to spawn (mp.spawn); torchrun sets its own"})
    loss_norm: str = field(default="frames", metadata={
        "choices": ("frames", "sum"),
        "help": "optimise loss / frames over all ranks (equal to one process on the whole batch), or the sum"})
    freeze_pattern: List[str] = field(default_factory=list, metadata={
        "help": "comma-separated regexes: matching parameter names are frozen"})
    max_bad_batches: int = field(default=20, metadata={"help": "stop after this many skipped batches in a row"})
    max_oom_batches: int = field(default=0, metadata={
        "help": "one process: skip (log, count) up to this many batches that run out of GPU memory; "
                "0 = stop at the first. Under DDP an OOM always stops"})
    scan_oom: bool = field(default=True, metadata={
        "help": "on a GPU, first run forward+backward on the epoch's most pessimistic batches (icefall's scan)"})
    preemption_signals: List[str] = field(default_factory=lambda: ["SIGUSR1", "SIGTERM"], metadata={
        "help": "comma-separated signals on which every rank finishes its step, saves checkpoint-B.pt and "
                "exits with status 75 (resume: the same command with --start-epoch auto); empty = off"})
    use_fp16: bool = field(default=False, metadata={"help": "CUDA only"})
    use_bf16: bool = field(default=False, metadata={"help": "CUDA only"})
    find_unused_parameters: bool = field(default=False, metadata={"help": "DDP"})
    fsdp: bool = field(default=False, metadata={
        "help": "shard parameters, gradients and optimiser state over the ranks (FSDP2) instead of DDP: "
                "for LLMs that do not fit one GPU; checkpoints are consolidated into one file"})
    fsdp_units: str = field(default=r"DecoderLayer$|EncoderLayer$", metadata={
        "help": "regex on module class names: each match is one FSDP unit (gathered while it runs)"})
    save_every_n: int = field(default=4000, metadata={"help": "checkpoint-B.pt period in batches, 0 = off"})
    keep_last_k: int = field(default=30, metadata={"help": "checkpoint-B.pt files kept"})
    average_period: int = field(default=200, metadata={
        "help": "update the running model_avg every N batches, 0 = off"})
    valid_interval: int = field(default=3000, metadata={"help": "validate every N batches; 0 = epoch end only"})
    log_interval: int = field(default=50, metadata={"help": "log the training loss every N batches"})
    progress_seconds: float = field(default=60.0, metadata={
        "help": "without a terminal, a progress line at least this often (and every --log-interval batches)"})
    archive_old_run: bool = field(default=False, metadata={
        "help": "a fresh run in a folder holding another run's checkpoints moves them to "
                "exp-dir/old-run-<time>/ (default: refuse)"})
    cache_frozen: bool = field(default=True, metadata={
        "help": "zeroth-order steps compute what is frozen (encoders, frozen lower stacks) once per batch, "
                "not once per query"})
    frozen_output_store_gb: float = field(default=4.0, metadata={
        "help": "models with frozen encoders (LLM-ASR, MoSE) keep each utterance's encoder output in CPU memory "
                "across epochs, up to this many GiB, when no augmentation changes the input; 0 = off"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many updates (0: --num-epochs decides)"})
    tensorboard: bool = True
    save_trainable_only: bool = field(default=False, metadata={
        "help": "checkpoints hold trainable parameters and buffers only (adapters)"})

    def validate(self) -> None:
        if self.start_epoch != "auto" and (not isinstance(self.start_epoch, int) or self.start_epoch < 1):
            raise ValueError(f"--start-epoch must be 'auto' or an epoch >= 1, got {self.start_epoch!r}")
        if self.start_batch < 0:
            raise ValueError(f"--start-batch must be >= 0, got {self.start_batch}")
        if self.use_fp16 and self.use_bf16:
            raise ValueError("choose one of --use-fp16 and --use-bf16")
        if self.loss_norm not in ("frames", "sum"):
            raise ValueError(f"--loss-norm must be frames or sum, got {self.loss_norm!r}")
        if self.average_period < 0:
            raise ValueError(f"--average-period must be >= 0, got {self.average_period}")


def config_with(config, **changes):
    """A copy of a config dataclass with some fields changed (validated)."""
    new = dataclasses.replace(config, **changes)
    if hasattr(new, "validate"):
        new.validate()
    return new
