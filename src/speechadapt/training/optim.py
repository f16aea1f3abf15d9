"""The one optimiser registry and the one optimiser step.

Every method trains through ``loss = optimizer.step(loss_fn)``, where
``loss_fn(grad_enabled: bool)`` returns the scalar (normalised) loss of the current
batch:

* first-order optimisers (``adamw``, ``sgd``, ``scaled_adam``) run it once under
  autograd, back-propagate (through the AMP grad scaler when fp16 is on), clip to
  ``--max-grad-norm``, check the gradients and step;
* zeroth-order ones (``mezo``, ``zo-asr``, ``hizoo``, ``lozo``: :class:`ZOOptimizer`) run it
  2q (+1) times with ``grad_enabled=False`` under ``torch.inference_mode``.

Either way ``step`` returns the loss as a float; ``optimizer.skipped`` says why the
last step did not update (``None`` when it did), ``optimizer.zeroth_order`` which kind
it is (the Trainer keeps a zeroth-order model in eval mode and does not wrap it in
DDP), and the pass counters (``num_forwards``, ``num_backwards``) are saved with the
state for exact resume. Flags: :class:`OptimizerConfig`, one owner each.

Adding an optimiser: one entry in ``FIRST_ORDER`` (a torch optimiser factory) or in
``ZO_PRESETS`` (settings of :class:`ZOOptimizer`).
"""

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from speechadapt.adapt.zo import ZOOptimizer, call_loss_fn
from speechadapt.training.scaled_adam import ScaledAdam

NamedParams = Sequence[Tuple[str, nn.Parameter]]

# Settings of the zeroth-order variants (docs/architecture.md, "Adding a method").
ZO_PRESETS: Dict[str, Dict[str, Any]] = {
    "mezo": dict(num_queries=1, eps=1e-3, estimator="spsa"),
    "zo-asr": dict(num_queries=8, eps=1e-3, estimator="spsa"),
    "hizoo": dict(num_queries=1, eps=1e-3, estimator="hizoo"),
    "lozo": dict(num_queries=1, eps=1e-3, estimator="lozo"),
}


@dataclass
class OptimizerConfig:
    optimizer: str = field(default="scaled_adam", metadata={"help": "first-order: adamw, sgd, scaled_adam; "
                                                                    "zeroth-order: mezo, zo-asr, hizoo, lozo"})
    base_lr: float = 0.04
    weight_decay: float = field(default=0.0, metadata={
        "help": "decoupled decay of matrices (biases and norm weights are not decayed); not ScaledAdam"})
    momentum: float = field(default=0.0, metadata={"help": "sgd and zeroth-order heavy-ball momentum"})
    max_grad_norm: float = field(default=0.0, metadata={"help": "first-order clipping, 0 = off"})
    clipping_scale: float = field(default=2.0, metadata={
        "help": "ScaledAdam: clip at this times the median recent gradient norm"})
    zo_eps: Optional[float] = field(default=None, metadata={"help": "perturbation scale (preset's if unset)"})
    zo_num_queries: Optional[int] = field(default=None, metadata={"help": "q, averaged (preset's if unset)"})
    zo_seed: int = field(default=0, metadata={"help": "seed of the perturbations, the same on every rank"})
    hessian_smooth: Optional[float] = field(default=None, metadata={"help": "HiZOO only"})
    lozo_rank: int = field(default=2, metadata={"help": "LOZO: rank r of the perturbations U V^T"})
    lozo_interval: int = field(default=50, metadata={"help": "LOZO: steps between new V (nu)"})
    zo_batched_queries: bool = field(default=False, metadata={
        "help": "evaluate the 2q perturbed copies of a small tuned set in one vectorised forward"})
    accum_grad: int = field(default=1, metadata={
        "help": "first-order: one update per N batches, on the mean of their (normalised) gradients"})

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZER_NAMES:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {OPTIMIZER_NAMES}")
        if self.base_lr < 0 or self.max_grad_norm < 0 or self.weight_decay < 0:
            raise ValueError("--base-lr, --max-grad-norm and --weight-decay must be >= 0")
        if self.zo_eps is not None and self.zo_eps <= 0:
            raise ValueError(f"--zo-eps must be > 0, got {self.zo_eps}")
        if self.zo_num_queries is not None and self.zo_num_queries < 1:
            raise ValueError(f"--zo-num-queries must be >= 1, got {self.zo_num_queries}")
        if self.accum_grad < 1:
            raise ValueError(f"--accum-grad must be >= 1, got {self.accum_grad}")
        if self.accum_grad > 1 and self.zeroth_order:
            raise ValueError("--accum-grad is for first-order optimisers (a zeroth-order step has no gradient "
                             "to accumulate: raise --zo-num-queries or --max-duration instead)")
        if self.optimizer == "scaled_adam" and self.weight_decay > 0:
            raise ValueError("ScaledAdam has no weight decay (it learns each tensor's scale): "
                             "use --optimizer adamw for --weight-decay")

    @property
    def zeroth_order(self) -> bool:
        return self.optimizer in ZO_PRESETS


def decay_groups(groups: List[Dict[str, Any]], weight_decay: float) -> List[Dict[str, Any]]:
    """Each group split in two: weight decay on matrices only (biases and norm weights,
    < 2 dims, are not decayed)."""
    out = []
    for group in groups:
        params = group["params"]
        out += [dict(group, params=[p for p in params if p.dim() >= 2], weight_decay=weight_decay),
                dict(group, params=[p for p in params if p.dim() < 2], weight_decay=0.0)]
    return [g for g in out if g["params"]]


FIRST_ORDER: Dict[str, Callable[[List[Dict[str, Any]], OptimizerConfig], torch.optim.Optimizer]] = {
    "adamw": lambda gs, c: torch.optim.AdamW(decay_groups(gs, c.weight_decay), lr=c.base_lr),
    "sgd": lambda gs, c: torch.optim.SGD(decay_groups(gs, c.weight_decay), lr=c.base_lr, momentum=c.momentum),
    "scaled_adam": lambda gs, c: ScaledAdam(gs, lr=c.base_lr, clipping_scale=c.clipping_scale),
}
OPTIMIZER_NAMES = tuple(FIRST_ORDER) + tuple(ZO_PRESETS)


class FirstOrderOptimizer:
    """A torch optimiser behind the project's ``step(loss_fn)``: forward, backward,
    clip, check, step. ``params`` (model order) is what clipping and the
    gradient check see, as in a hand-written loop."""

    zeroth_order = False

    def __init__(self, optimizer: torch.optim.Optimizer, params: Sequence[nn.Parameter],
                 max_grad_norm: float = 0.0, grad_scaler: Optional[torch.amp.GradScaler] = None,
                 accum_grad: int = 1):
        self.optimizer = optimizer
        self.params = list(params)
        self.max_grad_norm = float(max_grad_norm)
        self.accum_grad = int(accum_grad)
        self.accumulated = 0  # batches whose gradients wait in .grad for the next update
        # DDP's ``no_sync`` (set by the Trainer): the batches before the last of an update
        # accumulate locally, and only the last backward all-reduces the sum.
        self.no_sync: Optional[Callable[[], Any]] = None
        self.grad_scaler = grad_scaler if grad_scaler is not None else torch.amp.GradScaler("cuda", enabled=False)
        self.skipped: Optional[str] = None
        self.last_grad_norm: Optional[float] = None
        self.num_steps = self.num_skipped = self.num_forwards = self.num_backwards = 0
        self.held: List[nn.Parameter] = []  # not updated while ``holding()`` is true (stable fine-tuning)
        self.holding: Callable[[], bool] = lambda: False

    def hold(self, params: Sequence[nn.Parameter], while_: Callable[[], bool]) -> None:
        """Leave ``params`` untouched (no update, no optimiser state, no decay) for as long as
        ``while_()`` is true: their gradients are dropped before clipping and the step."""
        self.held, self.holding = list(params), while_

    @property
    def param_groups(self) -> List[Dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def drop_gradients(self) -> None:
        """Forget the gradients waiting for an update (the whole accumulation cycle)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.accumulated = 0

    def _skip(self, why: str, loss) -> float:
        self.drop_gradients()
        self.skipped = why
        self.num_skipped += 1
        return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)

    def step(self, loss_fn) -> float:
        """Forward, backward; with ``accum_grad`` N, the update (clip, check, step) on every
        N-th call, on the sum of the N gradients divided by N."""
        self.skipped = None
        if self.accumulated == 0:
            self.optimizer.zero_grad(set_to_none=True)
        defer_sync = self.no_sync is not None and self.accumulated + 1 < self.accum_grad
        with self.no_sync() if defer_sync else contextlib.nullcontext():
            with torch.enable_grad():
                loss = call_loss_fn(loss_fn, grad_enabled=True)
            self.num_forwards += 1
            if not isinstance(loss, torch.Tensor):
                raise TypeError(f"loss_fn must return a loss tensor, got {type(loss).__name__}")
            if not torch.isfinite(loss):
                return self._skip("non-finite loss", loss)
            if not loss.requires_grad:
                raise ValueError("a first-order optimiser needs loss_fn(True) to return a differentiable loss; "
                                 "use a zeroth-order optimiser for a non-differentiable objective")
            self.grad_scaler.scale(loss / self.accum_grad).backward()
        self.num_backwards += 1
        self.accumulated += 1
        if self.accumulated < self.accum_grad:
            return float(loss.detach())
        self.accumulated = 0
        if self.held and self.holding():
            for p in self.held:
                p.grad = None
        with_grad = [p for p in self.params if p.grad is not None]
        scaler = self.grad_scaler if self.grad_scaler.is_enabled() else None
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        max_norm = self.max_grad_norm if self.max_grad_norm > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(with_grad, max_norm) if with_grad else torch.tensor(0.0)
        self.last_grad_norm = float(norm)
        if scaler is not None:
            # The scaler skips inf steps itself and lowers its scale: normal for fp16.
            scaler.step(self.optimizer)
            scaler.update()
        elif not torch.isfinite(norm):
            return self._skip("non-finite gradient", loss)
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.num_steps += 1
        return float(loss.detach())

    def probe(self, loss_fn) -> None:
        """Forward and backward without an update (the memory scan); gradients dropped."""
        with torch.enable_grad():
            loss = call_loss_fn(loss_fn, grad_enabled=True)
        self.grad_scaler.scale(loss).backward()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> Dict[str, Any]:
        state = self.optimizer.state_dict()
        state["first_order"] = dict(num_steps=self.num_steps, num_skipped=self.num_skipped,
                                    num_forwards=self.num_forwards, num_backwards=self.num_backwards,
                                    accumulated=self.accumulated)
        if self.accumulated:  # saved between the batches of one update: their gradients, for exact resume
            state["first_order"]["grads"] = [None if p.grad is None else p.grad.detach().clone() for p in self.params]
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        state = dict(state)
        counters = dict(state.pop("first_order", None) or {})
        if "zo" in state:
            raise ValueError("this checkpoint holds a zeroth-order optimiser state: resume it with the "
                             "same --optimizer it was trained with")
        self.optimizer.load_state_dict(state)
        grads = counters.pop("grads", None)
        for key, value in counters.items():
            setattr(self, key, int(value))
        if grads is not None:
            if len(grads) != len(self.params):
                raise ValueError(f"the checkpoint holds accumulated gradients of {len(grads)} tensors, "
                                 f"this optimiser has {len(self.params)}")
            for p, g in zip(self.params, grads):
                p.grad = None if g is None else g.to(p.device, p.dtype).clone()


def lr_groups(named: NamedParams, base_lr: float, lr_scale_of: Optional[Callable[[str], float]],
              keep_names: bool = False) -> List[Dict[str, Any]]:
    """Param groups by learning rate: ``base_lr * lr_scale_of(name)`` (one group without it)."""
    if lr_scale_of is None:
        return [dict(params=[item if keep_names else item[1] for item in named], lr=base_lr)]
    by_scale: Dict[float, List] = {}
    for name, p in named:
        by_scale.setdefault(float(lr_scale_of(name)), []).append((name, p) if keep_names else p)
    return [dict(params=items, lr=base_lr * scale) for scale, items in by_scale.items()]


def build_optimizer(named_params: NamedParams, config: OptimizerConfig,
                    grad_scaler: Optional[torch.amp.GradScaler] = None,
                    lr_scale_of: Optional[Callable[[str], float]] = None):
    """The optimiser ``config`` names over ``named_params`` (those requiring grad);
    ``lr_scale_of(name)`` gives parameters their own learning rates (e.g. encoder and
    decoder of Whisper), which the schedules scale alike."""
    config.validate()
    named = [(n, p) for n, p in named_params if p.requires_grad]
    if not named:
        raise ValueError("no trainable parameters: check --freeze-pattern / the parameter selection")
    params = [p for _, p in named]
    if config.optimizer in FIRST_ORDER:
        inner = FIRST_ORDER[config.optimizer](lr_groups(named, config.base_lr, lr_scale_of), config)
        return FirstOrderOptimizer(inner, params, config.max_grad_norm, grad_scaler, config.accum_grad)
    settings = dict(ZO_PRESETS[config.optimizer], weight_decay=config.weight_decay, momentum=config.momentum,
                    seed=config.zo_seed, lozo_rank=config.lozo_rank, lozo_interval=config.lozo_interval,
                    batched_queries=config.zo_batched_queries)
    optional = dict(eps=config.zo_eps, num_queries=config.zo_num_queries, hessian_smooth=config.hessian_smooth)
    settings.update({k: v for k, v in optional.items() if v is not None})
    groups = lr_groups(named, config.base_lr, lr_scale_of, keep_names=True)
    return ZOOptimizer(groups if lr_scale_of is not None else named, lr=config.base_lr, **settings)
