"""Optimisers and learning-rate schedules.

``ScaledAdam`` follows the idea of icefall's optimiser of that name (our own,
simplified implementation): each non-scalar tensor's update is Adam's normalised
direction times the tensor's RMS, so every tensor changes by a fixed *fraction* of its
size; the RMS itself is learned as a separate scalar (gradient w.r.t. the log scale,
Adam-normalised, updated every ``size_update_period`` steps); scalars get plain Adam
at ``lr * scalar_lr_scale``; gradients are clipped to ``clipping_scale`` times the
median of recent (RMS-weighted) gradient norms. Defaults are icefall's.

Schedules are stepped the icefall way: ``step_batch(batch_idx_train)`` after every
optimiser step and ``step_epoch(epoch - 1)`` at the start of each (1-based) epoch.
"""

import math
from typing import Dict, Iterable, List, Optional

import torch
from torch.optim import Optimizer


class ScaledAdam(Optimizer):
    def __init__(
        self,
        params: Iterable,
        lr: float = 3e-2,
        clipping_scale: Optional[float] = 2.0,
        betas=(0.9, 0.98),
        scalar_lr_scale: float = 0.1,
        eps: float = 1e-8,
        param_min_rms: float = 1e-5,
        param_max_rms: float = 3.0,
        scalar_max: float = 10.0,
        size_update_period: int = 4,
        clipping_update_period: int = 100,
    ):
        defaults = dict(
            lr=lr,
            clipping_scale=clipping_scale,
            betas=tuple(betas),
            scalar_lr_scale=scalar_lr_scale,
            eps=eps,
            param_min_rms=param_min_rms,
            param_max_rms=param_max_rms,
            scalar_max=scalar_max,
            size_update_period=size_update_period,
            clipping_update_period=clipping_update_period,
        )
        super().__init__(params, defaults)

    def _first_param(self) -> torch.Tensor:
        return self.param_groups[0]["params"][0]

    def _clip_factor(self, group: Dict) -> float:
        """Scale to apply to every gradient: <= 1 when the norm exceeds the threshold."""
        if group["clipping_scale"] is None:
            return 1.0
        sumsq = []
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                rms = self.state[p].get("param_rms") if p.numel() > 1 else None
                grad = p.grad.float() if rms is None else p.grad.float() * rms
                sumsq.append((grad ** 2).sum())
        if not sumsq:
            return 1.0
        norm = float(torch.stack(sumsq).sum().sqrt())  # the one host sync per step
        # The norm history lives in the first parameter's state so that it is saved
        # and restored with the optimiser's state_dict (exact resume).
        head = self.state[self._first_param()]
        history = head.get("grad_norm_history")
        if history is None:
            history = torch.full((group["clipping_update_period"],), float("nan"))
            head["grad_norm_history"] = history
        seen = history[~torch.isnan(history)]
        factor = 1.0
        if seen.numel() >= min(10, history.numel()) and math.isfinite(norm):
            threshold = group["clipping_scale"] * float(seen.median())
            if norm > threshold > 0:
                factor = threshold / norm
        if math.isfinite(norm):
            history[:-1] = history[1:].clone()
            history[-1] = norm
        return factor

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        clip = self._clip_factor(self.param_groups[0])
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("ScaledAdam does not support sparse gradients")
                self._step_param(group, p, p.grad.float() * clip)
        return loss

    def _init_state(self, group: Dict, p: torch.Tensor) -> Dict:
        state = self.state[p]
        if "step" in state:
            return state
        state["step"] = torch.zeros((), dtype=torch.float32)
        state["delta"] = torch.zeros_like(p, dtype=torch.float32)
        state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
        if p.numel() > 1:
            rms = p.detach().float().pow(2).mean().sqrt()
            state["param_rms"] = rms.clamp(group["param_min_rms"], group["param_max_rms"])
            state["scale_grads"] = torch.zeros(group["size_update_period"], dtype=torch.float32, device=p.device)
            state["scale_exp_avg_sq"] = torch.zeros((), dtype=torch.float32, device=p.device)
        return state

    def _step_param(self, group: Dict, p: torch.Tensor, grad: torch.Tensor) -> None:
        state = self._init_state(group, p)
        step = int(state["step"])
        beta1, beta2 = group["betas"]
        if p.numel() == 1:
            self._scalar_step(group, p, grad, state, step)
        else:
            self._tensor_step(group, p, grad, state, step)
        # Momentum on the final update, as icefall does it.
        p.add_(state["delta"].to(p.dtype))
        if p.numel() == 1:
            p.clamp_(-group["scalar_max"], group["scalar_max"])
        state["step"] += 1

    def _adam_direction(self, grad, state, step, beta2, eps) -> torch.Tensor:
        exp_avg_sq = state["exp_avg_sq"]
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction2 = 1 - beta2 ** (step + 1)
        return grad / ((exp_avg_sq / bias_correction2).sqrt() + eps)

    def _scalar_step(self, group, p, grad, state, step) -> None:
        beta1, beta2 = group["betas"]
        lr = group["lr"] * group["scalar_lr_scale"]
        direction = self._adam_direction(grad, state, step, beta2, group["eps"])
        state["delta"].mul_(beta1).add_(direction, alpha=-lr * (1 - beta1))

    def _tensor_step(self, group, p, grad, state, step) -> None:
        beta1, beta2 = group["betas"]
        period = group["size_update_period"]
        # Gradient w.r.t. the log of the tensor's scale, accumulated over a period.
        state["scale_grads"][step % period] = (p.detach().float() * grad).sum()
        if step % period == period - 1:
            self._update_param_rms(group, p, state, step)
        direction = self._adam_direction(grad, state, step, beta2, group["eps"])
        state["delta"].mul_(beta1).add_(direction * state["param_rms"], alpha=-group["lr"] * (1 - beta1))

    def _update_param_rms(self, group, p, state, step) -> None:
        beta1, beta2 = group["betas"]
        period = group["size_update_period"]
        scale_grad = state["scale_grads"].sum()
        n_updates = step // period + 1
        state["scale_exp_avg_sq"].mul_(beta2 ** period).add_(scale_grad ** 2 * (1 - beta2 ** period))
        denom = (state["scale_exp_avg_sq"] / (1 - beta2 ** (period * n_updates))).sqrt() + group["eps"]
        size_lr = group["lr"] * group["scalar_lr_scale"]
        # Change of log-scale, limited so the RMS stays within its bounds.
        rms = p.detach().float().pow(2).mean().sqrt()
        scale_step = -size_lr * period * scale_grad / denom
        out_of_bounds = ((rms < group["param_min_rms"]) & (scale_step < 0)) | (
            (rms > group["param_max_rms"]) & (scale_step > 0))
        scale_step = torch.where(out_of_bounds, torch.zeros_like(scale_step), scale_step)
        state["delta"].add_(p.detach().float() * (scale_step * (1 - beta1)))
        state["param_rms"] = rms.clamp(group["param_min_rms"], group["param_max_rms"])


class LRSchedule:
    """Base class: sets ``lr = base_lr * factor()`` for each param group.

    ``state_dict`` holds plain numbers only (weights_only-loadable).
    """

    def __init__(self, optimizer: Optimizer):
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.base_lrs = [g["base_lr"] for g in optimizer.param_groups]
        self.batch = 0
        self.epoch = 0
        self._apply()

    def factor(self) -> float:
        raise NotImplementedError

    def _apply(self) -> None:
        f = self.factor()
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


def build_optimizer(params, name: str, lr: float, weight_decay: float = 0.0,
                    clipping_scale: Optional[float] = 2.0) -> Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: check --freeze-pattern")
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "scaled_adam":
        return ScaledAdam(params, lr=lr, clipping_scale=clipping_scale)
    raise ValueError(f"unknown optimizer {name!r}: expected adamw or scaled_adam")


def build_scheduler(optimizer: Optimizer, name: str, lr_batches: float = 7500,
                    lr_epochs: float = 3.5, warmup_batches: float = 500.0,
                    total_steps: int = 0) -> LRSchedule:
    if name == "eden":
        return Eden(optimizer, lr_batches, lr_epochs, warmup_batches)
    if name == "tri_stage":
        return TriStage(optimizer, total_steps)
    if name == "constant":
        return ConstantLR(optimizer)
    raise ValueError(f"unknown scheduler {name!r}: expected eden, tri_stage or constant")
