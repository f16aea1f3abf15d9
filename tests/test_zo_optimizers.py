"""The one optimiser registry: one step(loss_fn) for first-order and zeroth-order,
one set of flags."""

import argparse

import pytest
import torch
from torch import nn

from speechadapt.adapt.zo import ZOOptimizer
from speechadapt.training.optim import (OPTIMIZER_NAMES, ZO_PRESETS, FirstOrderOptimizer, OptimizerConfig,
                                        build_optimizer)
from speechadapt.training.schedulers import SchedulerConfig, build_scheduler
from speechadapt.utils.flags import add_dataclass_arguments, dataclass_from_args

torch.set_num_threads(1)


def task():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=gen)
    y = x @ torch.randn(5, 1, generator=gen)
    torch.manual_seed(0)
    return nn.Linear(5, 1), x, y


LRS = {"adamw": 0.02, "sgd": 0.05, "scaled_adam": 0.02, "mezo": 0.02, "zo-asr": 0.02, "hizoo": 0.02, "lozo": 0.02}


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_every_optimizer_lowers_the_loss_through_the_same_call(name):
    model, x, y = task()
    calls = []

    def loss_fn(grad_enabled):
        calls.append(grad_enabled)
        return ((model(x) - y) ** 2).mean()

    opt = build_optimizer(model.named_parameters(), OptimizerConfig(optimizer=name, base_lr=LRS[name]))
    first = opt.step(loss_fn)
    for _ in range(200):
        last = opt.step(loss_fn)
    zo = name in ZO_PRESETS
    assert isinstance(first, float) and last < 0.5 * first
    assert set(calls) == ({False} if zo else {True})
    assert opt.zeroth_order == zo and opt.skipped is None
    assert opt.num_forwards == len(calls) and opt.num_backwards == (0 if zo else 201)
    grads_exist = [p.grad is not None for p in model.parameters()]
    assert not any(grads_exist)  # first-order steps leave no gradients behind either


def test_presets_and_overrides():
    p = [("w", nn.Parameter(torch.zeros(3)))]
    zo_asr = build_optimizer(p, OptimizerConfig(optimizer="zo-asr", base_lr=2.4e-5))
    assert (zo_asr.num_queries, zo_asr.eps, zo_asr.estimator) == (8, 1e-3, "spsa")
    assert build_optimizer(p, OptimizerConfig(optimizer="mezo")).num_queries == 1
    assert build_optimizer(p, OptimizerConfig(optimizer="hizoo")).estimator == "hizoo"
    assert build_optimizer(p, OptimizerConfig(optimizer="zo-asr", zo_num_queries=2)).num_queries == 2
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(p, OptimizerConfig(optimizer="sgd-zo"))


def test_adamw_decays_only_matrices_and_accepts_a_closure_without_arguments():
    model, x, y = task()
    opt = build_optimizer(model.named_parameters(), OptimizerConfig(optimizer="adamw", base_lr=1e-2,
                                                                    weight_decay=0.1, max_grad_norm=1.0))
    decays = sorted((g["weight_decay"], len(g["params"])) for g in opt.param_groups)
    assert decays == [(0.0, 1), (0.1, 1)]
    loss = opt.step(lambda: ((model(x) - y) ** 2).mean())
    assert isinstance(loss, float) and 0 < opt.last_grad_norm


def test_first_order_refuses_a_non_differentiable_loss_and_skips_non_finite_ones():
    model, x, y = task()
    opt = build_optimizer(model.named_parameters(), OptimizerConfig(optimizer="adamw", base_lr=1e-2))
    assert isinstance(opt, FirstOrderOptimizer)
    with pytest.raises(ValueError, match="differentiable"):
        opt.step(lambda g: ((model(x) - y) ** 2).mean().detach())
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(lambda: ((model(x) - y) ** 2).mean() * float("nan"))
    assert opt.skipped == "non-finite loss"
    hook = model.weight.register_hook(lambda g: g * float("inf"))  # finite loss, infinite gradient
    loss = opt.step(lambda: ((model(x) - y) ** 2).mean())
    assert opt.skipped == "non-finite gradient" and loss == loss  # the loss itself was finite
    assert opt.num_skipped == 2 and opt.num_steps == 0
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert all(p.grad is None for p in model.parameters())
    hook.remove()
    opt.step(lambda: ((model(x) - y) ** 2).mean())
    assert opt.skipped is None and opt.num_steps == 1


def test_the_schedule_drives_the_zo_learning_rate():
    model, x, y = task()
    opt = build_optimizer(model.named_parameters(), OptimizerConfig(optimizer="mezo", base_lr=0.1))
    sched = build_scheduler(opt, SchedulerConfig(scheduler="tri_stage", total_steps=10))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.01)
    before = [p.detach().clone() for p in model.parameters()]
    for step in range(1, 3):
        opt.step(lambda g: ((model(x) - y) ** 2).mean())
        sched.step_batch(step)
    assert opt.param_groups[0]["lr"] > 0.1 * 0.01
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_command_line_flags_build_the_optimizer(name):
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, OptimizerConfig)
    args = parser.parse_args(["--optimizer", name, "--zo-num-queries", "3", "--weight-decay", "0.01"]
                             if name != "scaled_adam" else ["--optimizer", name])
    opt = build_optimizer([("w", nn.Parameter(torch.zeros(2, 2)))], dataclass_from_args(OptimizerConfig, args))
    if name in ZO_PRESETS:
        assert isinstance(opt, ZOOptimizer) and opt.num_queries == 3
    else:
        assert isinstance(opt, FirstOrderOptimizer)
