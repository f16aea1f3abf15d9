"""One optimiser interface for first-order and zeroth-order fine-tuning.

Stages switch with ``--optimizer {adamw, mezo, zo-asr, hizoo}`` and always call

    loss = optimizer.step(loss_fn)

``loss_fn(grad_enabled: bool)`` computes the scalar loss of the current batch (a
function without arguments is accepted too). First-order optimisers call it under
autograd, back-propagate, clip and step; zeroth-order ones call it 2q times (2q+1
for HiZOO) under ``torch.inference_mode`` with ``grad_enabled=False``. Either way
``step`` returns the loss as a float. Every returned object is a
``torch.optim.Optimizer``, so LR schedulers and ``state_dict`` resume work unchanged.
"""

import argparse
from typing import Any, Dict, Iterable, List, Optional

import torch

from speechadapt.adapt.zo import ZOOptimizer, as_param_groups, call_loss_fn

OPTIMIZER_NAMES = ("adamw", "mezo", "zo-asr", "hizoo")

# Settings of the zeroth-order variants (DESIGN.md, "Adaptation methods").
ZO_PRESETS: Dict[str, Dict[str, Any]] = {
    "mezo": dict(num_queries=1, eps=1e-3, estimator="spsa"),
    "zo-asr": dict(num_queries=8, eps=1e-3, estimator="spsa"),
    "hizoo": dict(num_queries=1, eps=1e-3, estimator="hizoo"),
}


def is_zeroth_order(name: str) -> bool:
    return name in ZO_PRESETS


def decay_groups(params: Iterable, weight_decay: float) -> List[Dict[str, Any]]:
    """Weight decay on matrices only: biases and norm weights (< 2 dims) are not decayed."""
    tensors = as_param_groups(params)
    if tensors and isinstance(tensors[0], dict):
        return tensors  # the caller already made groups
    decay = [p for p in tensors if p.dim() >= 2]
    no_decay = [p for p in tensors if p.dim() < 2]
    groups = [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]
    return [g for g in groups if g["params"]]


class FirstOrderStepMixin:
    """Gives a torch optimiser ``step(loss_fn) -> float``: forward, backward, clip, step."""

    max_grad_norm: Optional[float] = None

    def step(self, loss_fn=None):  # type: ignore[override]
        if loss_fn is None:  # plain torch use: gradients are already there
            return super().step()
        self.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = call_loss_fn(loss_fn, grad_enabled=True)
        if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
            raise ValueError(
                "a first-order optimiser needs loss_fn(True) to return a differentiable "
                "loss tensor; use a zeroth-order optimiser for a non-differentiable objective"
            )
        loss.backward()
        if self.max_grad_norm:
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        super().step()
        return float(loss.detach())


class AdamWLossFn(FirstOrderStepMixin, torch.optim.AdamW):
    """AdamW with the shared ``step(loss_fn)`` convention."""

    def __init__(
        self,
        params: Iterable,
        lr: float,
        weight_decay: float = 0.0,
        betas=(0.9, 0.999),
        adam_eps: float = 1e-8,
        max_grad_norm: Optional[float] = None,
    ):
        super().__init__(decay_groups(params, weight_decay), lr=lr, betas=tuple(betas), eps=adam_eps)
        self.max_grad_norm = max_grad_norm


def build_optimizer(name: str, params: Iterable, lr: float, **kwargs) -> torch.optim.Optimizer:
    """``adamw`` -> :class:`AdamWLossFn`; ``mezo``/``zo-asr``/``hizoo`` -> :class:`ZOOptimizer`
    with that preset, any keyword overriding it (e.g. ``num_queries=4``)."""
    if name == "adamw":
        return AdamWLossFn(params, lr=lr, **kwargs)
    if name in ZO_PRESETS:
        settings = dict(ZO_PRESETS[name])
        settings.update(kwargs)
        return ZOOptimizer(params, lr=lr, **settings)
    raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZER_NAMES}")


def add_optimizer_arguments(parser: argparse.ArgumentParser, default: str = "adamw") -> None:
    """The optimiser flags every fine-tuning stage shares (None = the preset's value)."""
    group = parser.add_argument_group("optimizer")
    group.add_argument("--optimizer", choices=OPTIMIZER_NAMES, default=default)
    group.add_argument("--weight-decay", type=float, default=0.0)
    group.add_argument("--max-grad-norm", type=float, default=None, help="first-order only")
    group.add_argument("--zo-eps", type=float, default=None, help="perturbation scale")
    group.add_argument("--zo-num-queries", type=int, default=None, help="q, averaged")
    group.add_argument("--zo-momentum", type=float, default=0.0)
    group.add_argument("--zo-seed", type=int, default=0, help="same on every rank")
    group.add_argument("--hessian-smooth", type=float, default=None, help="HiZOO only")


def optimizer_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """Turn the parsed flags into ``build_optimizer`` keywords for ``args.optimizer``."""
    if args.optimizer == "adamw":
        return dict(weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm)
    kwargs: Dict[str, Any] = dict(
        weight_decay=args.weight_decay, momentum=args.zo_momentum, seed=args.zo_seed
    )
    optional = dict(eps=args.zo_eps, num_queries=args.zo_num_queries)
    if args.optimizer == "hizoo":
        optional["hessian_smooth"] = args.hessian_smooth
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    return kwargs
