"""``ScaledAdam``, icefall's optimiser for the Zipformer.

``ScaledAdam`` follows the idea of icefall's optimiser of that name (our own,
simplified implementation): each non-scalar tensor's update is Adam's normalised
direction times the tensor's RMS, so every tensor changes by a fixed *fraction* of its
size; the RMS itself is learned as a separate scalar (gradient w.r.t. the log scale,
Adam-normalised, updated every ``size_update_period`` steps); scalars get plain Adam
at ``lr * scalar_lr_scale``; gradients are clipped to ``clipping_scale`` times the
median of recent (RMS-weighted) gradient norms. Defaults are icefall's.

It is a plain torch optimiser (gradients in, ``step()``); the registry of
:mod:`speechadapt.training.optim` wraps it in the project's ``step(loss_fn)``.
"""

import math
from typing import Dict, Iterable, Optional

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
