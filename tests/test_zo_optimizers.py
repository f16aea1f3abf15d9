"""The shared optimiser factory: one step(loss_fn) convention for AdamW and ZO."""

import argparse

import pytest
import torch
from torch import nn

from speechadapt.adapt.optimizers import (
    AdamWLossFn,
    OPTIMIZER_NAMES,
    add_optimizer_arguments,
    build_optimizer,
    is_zeroth_order,
    optimizer_kwargs,
)
from speechadapt.adapt.zo import ZOOptimizer

torch.set_num_threads(1)


def task():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=gen)
    y = x @ torch.randn(5, 1, generator=gen)
    torch.manual_seed(0)
    return nn.Linear(5, 1), x, y


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_every_optimizer_lowers_the_loss_through_the_same_call(name):
    model, x, y = task()
    calls = []

    def loss_fn(grad_enabled):
        calls.append(grad_enabled)
        return ((model(x) - y) ** 2).mean()

    opt = build_optimizer(name, model.named_parameters(), lr=0.02)
    assert isinstance(opt, torch.optim.Optimizer)
    first = opt.step(loss_fn)
    for _ in range(200):
        last = opt.step(loss_fn)
    assert isinstance(first, float) and last < 0.5 * first
    assert set(calls) == ({False} if is_zeroth_order(name) else {True})
    grads_exist = [p.grad is not None for p in model.parameters()]
    assert all(grads_exist) != is_zeroth_order(name)


def test_presets_and_overrides():
    p = [nn.Parameter(torch.zeros(3))]
    zo_asr = build_optimizer("zo-asr", p, lr=2.4e-5)
    assert (zo_asr.num_queries, zo_asr.eps, zo_asr.estimator) == (8, 1e-3, "spsa")
    assert build_optimizer("mezo", p, lr=1e-6).num_queries == 1
    assert build_optimizer("hizoo", p, lr=1e-6).estimator == "hizoo"
    assert build_optimizer("zo-asr", p, lr=1e-6, num_queries=2).num_queries == 2
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("sgd-zo", p, lr=1.0)


def test_adamw_decays_only_matrices_and_accepts_a_closure_without_arguments():
    model, x, y = task()
    opt = build_optimizer("adamw", model.parameters(), lr=1e-2, weight_decay=0.1, max_grad_norm=1.0)
    decays = sorted((g["weight_decay"], len(g["params"])) for g in opt.param_groups)
    assert decays == [(0.0, 1), (0.1, 1)]
    loss = opt.step(lambda: ((model(x) - y) ** 2).mean())
    assert isinstance(loss, float)


def test_adamw_refuses_a_non_differentiable_loss():
    model, x, y = task()
    opt = AdamWLossFn(model.parameters(), lr=1e-2)
    with pytest.raises(ValueError, match="differentiable"):
        opt.step(lambda g: ((model(x) - y) ** 2).mean().detach().item())


def test_lr_scheduler_drives_the_zo_learning_rate():
    model, x, y = task()
    opt = build_optimizer("mezo", model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.0 if step == 0 else 1.0)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(lambda g: ((model(x) - y) ** 2).mean())  # lr 0 at step 0: nothing moves
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    sched.step()
    opt.step(lambda g: ((model(x) - y) ** 2).mean())
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_command_line_flags_build_the_optimizer(name):
    parser = argparse.ArgumentParser()
    add_optimizer_arguments(parser)
    args = parser.parse_args(["--optimizer", name, "--zo-num-queries", "3", "--weight-decay", "0.01"])
    opt = build_optimizer(args.optimizer, [nn.Parameter(torch.zeros(2, 2))], 1e-3, **optimizer_kwargs(args))
    if is_zeroth_order(name):
        assert isinstance(opt, ZOOptimizer) and opt.num_queries == 3
    else:
        assert isinstance(opt, AdamWLossFn)
