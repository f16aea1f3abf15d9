"""Training flags (icefall's names) and the typed config the loop reads.

Entry points call ``add_training_arguments(parser)`` and build the loop's config with
``TrainingConfig.from_args(args)``; flags a stage adds itself are simply ignored.
"""

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import List

from speechadapt.utils.args import str2bool


@dataclass
class TrainingConfig:
    exp_dir: str = "exp"
    num_epochs: int = 10
    start_epoch: int = 1
    start_batch: int = 0
    seed: int = 42
    world_size: int = 1
    # optimisation
    optimizer: str = "scaled_adam"
    base_lr: float = 0.04
    weight_decay: float = 0.0
    scheduler: str = "eden"
    lr_batches: float = 7500.0
    lr_epochs: float = 3.5
    warmup_batches: float = 500.0
    total_steps: int = 0
    grad_clip: float = 0.0
    clipping_scale: float = 2.0
    loss_norm: str = "frames"
    freeze_pattern: List[str] = field(default_factory=list)
    max_bad_batches: int = 20
    use_fp16: bool = False
    use_bf16: bool = False
    find_unused_parameters: bool = False
    # bookkeeping
    save_every_n: int = 4000
    keep_last_k: int = 30
    average_period: int = 200
    valid_interval: int = 3000
    log_interval: int = 50
    tensorboard: bool = True
    save_trainable_only: bool = False
    max_duration: float = 600.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainingConfig":
        values = vars(args)
        names = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in values.items() if k in names})
        config.validate()
        return config

    def validate(self) -> None:
        if self.start_epoch < 1:
            raise ValueError(f"--start-epoch must be >= 1, got {self.start_epoch}")
        if self.start_batch < 0:
            raise ValueError(f"--start-batch must be >= 0, got {self.start_batch}")
        if self.use_fp16 and self.use_bf16:
            raise ValueError("choose one of --use-fp16 and --use-bf16")
        if self.loss_norm not in ("frames", "sum"):
            raise ValueError(f"--loss-norm must be frames or sum, got {self.loss_norm!r}")
        if self.average_period < 0:
            raise ValueError(f"--average-period must be >= 0, got {self.average_period}")


def _patterns(value: str) -> List[str]:
    return [p for p in value.split(",") if p.strip()]


def add_training_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = TrainingConfig()
    g = parser.add_argument_group("training")
    g.add_argument("--exp-dir", type=str, default=d.exp_dir, help="checkpoints, logs, tensorboard")
    g.add_argument("--num-epochs", type=int, default=d.num_epochs)
    g.add_argument("--start-epoch", type=int, default=d.start_epoch,
                   help="resume from exp-dir/epoch-(N-1).pt when > 1")
    g.add_argument("--start-batch", type=int, default=d.start_batch,
                   help="resume from exp-dir/checkpoint-B.pt when > 0 (overrides --start-epoch)")
    if "--seed" not in parser._option_string_actions:  # a datamodule may own it
        g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--world-size", type=int, default=d.world_size, help="processes to spawn (mp.spawn)")
    g.add_argument("--optimizer", choices=["adamw", "scaled_adam"], default=d.optimizer)
    g.add_argument("--base-lr", type=float, default=d.base_lr)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW only")
    g.add_argument("--scheduler", choices=["eden", "tri_stage", "constant"], default=d.scheduler)
    g.add_argument("--lr-batches", type=float, default=d.lr_batches, help="Eden")
    g.add_argument("--lr-epochs", type=float, default=d.lr_epochs, help="Eden")
    g.add_argument("--warmup-batches", type=float, default=d.warmup_batches, help="Eden warm-up")
    g.add_argument("--total-steps", type=int, default=d.total_steps,
                   help="tri_stage length; 0 = num_epochs * len(train_dl)")
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max grad norm, 0 = off")
    g.add_argument("--clipping-scale", type=float, default=d.clipping_scale,
                   help="ScaledAdam: clip at this times the median recent grad norm")
    g.add_argument("--loss-norm", choices=["frames", "sum"], default=d.loss_norm,
                   help="backward on loss / frames over all ranks, or on the summed loss")
    g.add_argument("--freeze-pattern", type=_patterns, default=[],
                   help="comma-separated regexes: matching parameter names are frozen")
    g.add_argument("--max-bad-batches", type=int, default=d.max_bad_batches,
                   help="stop after this many non-finite losses in a row")
    g.add_argument("--use-fp16", type=str2bool, default=d.use_fp16, help="CUDA only")
    g.add_argument("--use-bf16", type=str2bool, default=d.use_bf16, help="CUDA only")
    g.add_argument("--find-unused-parameters", type=str2bool, default=d.find_unused_parameters)
    g.add_argument("--save-every-n", type=int, default=d.save_every_n, help="checkpoint-B.pt period, 0 = off")
    g.add_argument("--keep-last-k", type=int, default=d.keep_last_k, help="checkpoint-B.pt files kept")
    g.add_argument("--average-period", type=int, default=d.average_period,
                   help="update the running model_avg every N batches, 0 = off")
    g.add_argument("--valid-interval", type=int, default=d.valid_interval, help="0 = epoch end only")
    g.add_argument("--log-interval", type=int, default=d.log_interval)
    g.add_argument("--tensorboard", type=str2bool, default=d.tensorboard)
    g.add_argument("--save-trainable-only", type=str2bool, default=d.save_trainable_only,
                   help="checkpoints hold trainable parameters and buffers only (adapters)")
    if "--max-duration" not in parser._option_string_actions:  # the datamodule's flag wins
        g.add_argument("--max-duration", type=float, default=d.max_duration,
                       help="seconds of audio per batch (for the stage's sampler)")
    return parser


def config_with(config: TrainingConfig, **changes) -> TrainingConfig:
    """A copy with some fields changed (validated)."""
    new = dataclasses.replace(config, **changes)
    new.validate()
    return new

