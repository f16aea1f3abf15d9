"""Learning-rate schedules, stepped the icefall way: ``step_batch(batch_idx_train)``
after every optimiser step and ``step_epoch(epoch - 1)`` at the start of each
(1-based) epoch. Each sets ``lr = base_lr * factor()`` for every param group, so it
works with any optimiser of the registry, first-order or zeroth-order.
"""

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

SCHEDULER_NAMES = ("eden", "tri_stage", "cosine", "constant")


@dataclass
class SchedulerConfig:
    scheduler: str = field(default="eden", metadata={"choices": SCHEDULER_NAMES})
    lr_batches: float = field(default=7500.0, metadata={"help": "Eden"})
    lr_epochs: float = field(default=3.5, metadata={"help": "Eden"})
    warmup_batches: float = field(default=500.0, metadata={"help": "Eden and cosine: warm-up length"})
    total_steps: int = field(default=0, metadata={
        "help": "tri_stage / cosine length; 0 = num_epochs * batches per epoch"})
    final_lr_scale: float = field(default=0.05, metadata={"help": "tri_stage / cosine: final lr / base lr"})

    @property
    def needs_total_steps(self) -> bool:
        return self.scheduler in ("tri_stage", "cosine")


class LRSchedule:
    """Base class: sets ``lr = base_lr * factor()`` for each param group.

    ``state_dict`` holds plain numbers only (weights_only-loadable).
    """

    def __init__(self, optimizer):
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.base_lrs = [g["base_lr"] for g in optimizer.param_groups]
        self.batch = 0
        self.epoch = 0
        # metric-driven rate (adapt.finetune.wer_feedback): a factor on top of the schedule,
        # saved with it so a resumed run keeps its cuts
        self.feedback = {"scale": 1.0, "best": None, "bad": 0}
        self._apply()

    def factor(self) -> float:
        raise NotImplementedError

    def _apply(self) -> None:
        f = self.factor() * float(getattr(self, "feedback", {}).get("scale", 1.0))
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def step_batch(self, batch: Optional[int] = None) -> None:
        self.batch = self.batch + 1 if batch is None else batch
        self._apply()

    def step_epoch(self, epoch: Optional[int] = None) -> None:
        self.epoch = self.epoch + 1 if epoch is None else epoch
        self._apply()

    def get_last_lr(self) -> List[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> Dict:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state: Dict) -> None:
        self.__dict__.update(state)
        self._apply()


class ConstantLR(LRSchedule):
    def factor(self) -> float:
        return 1.0


class Eden(LRSchedule):
    """icefall's Eden: inverse-quartic-root decay in batches and epochs, linear warm-up
    from ``warmup_start`` to 1 over ``warmup_batches``."""

    def __init__(self, optimizer, lr_batches: float = 7500, lr_epochs: float = 3.5,
                 warmup_batches: float = 500.0, warmup_start: float = 0.5):
        if lr_batches <= 0 or lr_epochs <= 0:
            raise ValueError(f"Eden: lr_batches and lr_epochs must be > 0, got {lr_batches}, {lr_epochs}")
        self.lr_batches = lr_batches
        self.lr_epochs = lr_epochs
        self.warmup_batches = warmup_batches
        self.warmup_start = warmup_start
        super().__init__(optimizer)

    def factor(self) -> float:
        batch_factor = ((self.batch ** 2 + self.lr_batches ** 2) / self.lr_batches ** 2) ** -0.25
        epoch_factor = ((self.epoch ** 2 + self.lr_epochs ** 2) / self.lr_epochs ** 2) ** -0.25
        if self.warmup_batches > 0 and self.batch < self.warmup_batches:
            warmup = self.warmup_start + (1 - self.warmup_start) * self.batch / self.warmup_batches
        else:
            warmup = 1.0
        return batch_factor * epoch_factor * warmup


class TriStage(LRSchedule):
    """Linear warm-up from ``init_lr_scale``, hold, then exponential decay to
    ``final_lr_scale`` (fairseq's tri-stage; default split 10/40/50 of ``total_steps``)."""

    def __init__(self, optimizer, total_steps: int, phase_ratio=(0.1, 0.4, 0.5),
                 init_lr_scale: float = 0.01, final_lr_scale: float = 0.05):
        if total_steps <= 0:
            raise ValueError(f"TriStage needs total_steps > 0, got {total_steps}")
        if abs(sum(phase_ratio) - 1.0) > 1e-6:
            raise ValueError(f"TriStage phase_ratio must sum to 1, got {phase_ratio}")
        self.warmup_steps = int(total_steps * phase_ratio[0])
        self.hold_steps = int(total_steps * phase_ratio[1])
        self.decay_steps = max(1, total_steps - self.warmup_steps - self.hold_steps)
        self.init_lr_scale = init_lr_scale
        self.final_lr_scale = final_lr_scale
        super().__init__(optimizer)

    def factor(self) -> float:
        s = self.batch
        if s < self.warmup_steps:
            return self.init_lr_scale + (1 - self.init_lr_scale) * s / self.warmup_steps
        s -= self.warmup_steps
        if s < self.hold_steps:
            return 1.0
        s = min(s - self.hold_steps, self.decay_steps)
        return math.exp(math.log(self.final_lr_scale) * s / self.decay_steps)


class Cosine(LRSchedule):
    """Linear warm-up from 0 over ``warmup_steps``, then cosine decay to
    ``final_lr_scale`` at ``total_steps``."""

    def __init__(self, optimizer, total_steps: int, warmup_steps: int = 0, final_lr_scale: float = 0.1):
        if total_steps <= 0:
            raise ValueError(f"Cosine needs total_steps > 0, got {total_steps}")
        self.total_steps = total_steps
        self.warmup_steps = max(0, min(int(warmup_steps), total_steps))
        self.final_lr_scale = final_lr_scale
        super().__init__(optimizer)

    def factor(self) -> float:
        if self.batch < self.warmup_steps:
            return (self.batch + 1) / self.warmup_steps
        progress = min(1.0, (self.batch - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.final_lr_scale + (1 - self.final_lr_scale) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer, config: SchedulerConfig, total_steps: int = 0) -> LRSchedule:
    """``total_steps``: the run's length, used when ``config.total_steps`` is 0."""
    steps = config.total_steps or total_steps
    if config.needs_total_steps and steps <= 0:
        raise ValueError(f"--scheduler {config.scheduler} needs --total-steps (the length of this run "
                         f"is not known in advance)")
    if config.scheduler == "eden":
        return Eden(optimizer, config.lr_batches, config.lr_epochs, config.warmup_batches)
    if config.scheduler == "tri_stage":
        return TriStage(optimizer, steps, final_lr_scale=config.final_lr_scale)
    if config.scheduler == "cosine":
        return Cosine(optimizer, steps, int(config.warmup_batches), config.final_lr_scale)
    if config.scheduler == "constant":
        return ConstantLR(optimizer)
    raise ValueError(f"unknown scheduler {config.scheduler!r}; choose from {SCHEDULER_NAMES}")
