"""ScaledAdam and the learning-rate schedules."""

import math

import pytest
import torch

from speechadapt.training.optim import OptimizerConfig, build_optimizer
from speechadapt.training.scaled_adam import ScaledAdam
from speechadapt.training.schedulers import ConstantLR, Cosine, Eden, SchedulerConfig, TriStage, build_scheduler

torch.set_num_threads(1)


def eden_formula(base, batch, epoch, lr_batches, lr_epochs):
    return base * ((batch ** 2 + lr_batches ** 2) / lr_batches ** 2) ** -0.25 * \
        ((epoch ** 2 + lr_epochs ** 2) / lr_epochs ** 2) ** -0.25


def test_eden_values_and_warmup():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.04)
    sched = Eden(opt, lr_batches=100, lr_epochs=2, warmup_batches=10, warmup_start=0.5)
    assert sched.get_last_lr()[0] == pytest.approx(0.04 * 0.5)
    sched.step_batch(5)
    assert sched.get_last_lr()[0] == pytest.approx(eden_formula(0.04, 5, 0, 100, 2) * 0.75)
    sched.step_epoch(3)
    sched.step_batch(250)
    assert sched.get_last_lr()[0] == pytest.approx(eden_formula(0.04, 250, 3, 100, 2))
    state = sched.state_dict()
    fresh = Eden(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.04), 100, 2, 10)
    fresh.load_state_dict(state)
    assert fresh.get_last_lr() == sched.get_last_lr()


def test_tri_stage_phases():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = TriStage(opt, total_steps=100)
    lrs = []
    for step in range(0, 101):
        sched.step_batch(step)
        lrs.append(sched.get_last_lr()[0])
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[5] == pytest.approx(0.01 + 0.99 * 0.5)
    assert lrs[10] == lrs[30] == lrs[49] == 1.0
    assert lrs[75] == pytest.approx(math.sqrt(0.05))  # half-way through the exponential decay
    assert lrs[100] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(lrs[50:], lrs[51:]))
    with pytest.raises(ValueError):
        TriStage(opt, total_steps=0)


def test_cosine_warms_up_then_decays_to_the_final_scale():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = Cosine(opt, total_steps=20, warmup_steps=4, final_lr_scale=0.1)
    lrs = []
    for step in range(21):
        sched.step_batch(step)
        lrs.append(sched.get_last_lr()[0])
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and lrs[12] == pytest.approx(0.55) and lrs[20] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="--total-steps"):
        build_scheduler(opt, SchedulerConfig(scheduler="cosine"))


def test_scaled_adam_updates_are_relative_to_parameter_size():
    torch.manual_seed(0)
    small = torch.nn.Parameter(torch.randn(50, 20) * 0.01)
    large = torch.nn.Parameter(small.detach() * 100)
    opt = ScaledAdam([small, large], lr=0.05, clipping_scale=None)
    before = [small.detach().clone(), large.detach().clone()]
    g = torch.randn(50, 20)
    small.grad, large.grad = g.clone(), g.clone() / 100  # same loss in rescaled coordinates
    opt.step()
    rel_small = float((small.detach() - before[0]).norm() / before[0].norm())
    rel_large = float((large.detach() - before[1]).norm() / before[1].norm())
    assert rel_small > 0
    assert rel_small == pytest.approx(rel_large, rel=1e-3)


def test_scaled_adam_fits_a_regression_and_saves_state():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    true_w = torch.randn(8, 3)
    y = x @ true_w + 0.5
    model = torch.nn.Linear(8, 3)
    opt = build_optimizer(model.named_parameters(), OptimizerConfig(optimizer="scaled_adam", base_lr=0.05))
    sched = ConstantLR(opt)
    first = None
    for step in range(300):
        loss = opt.step(lambda: ((model(x) - y) ** 2).mean())
        first = first if first is not None else loss
        sched.step_batch(step + 1)
    assert loss < 0.05 * first
    state = opt.state_dict()
    assert "grad_norm_history" in state["state"][0] and "param_rms" in state["state"][0]
    assert state["first_order"]["num_steps"] == 300
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer([("w", torch.nn.Parameter(torch.zeros(1), requires_grad=False))], OptimizerConfig())
    with pytest.raises(ValueError, match="no weight decay"):
        build_optimizer(model.named_parameters(), OptimizerConfig(weight_decay=0.1))


def _regression(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(4, 1)
    batches = [(torch.randn(6, 4, generator=g), torch.randn(6, 1, generator=g)) for _ in range(4)]
    return model, batches


def _loss_fn(model, batch):
    x, y = batch
    return lambda grad_enabled=True: ((model(x) - y) ** 2).mean()


def test_accumulated_gradients_make_one_update_on_their_mean_and_resume_exactly():
    torch.manual_seed(0)
    model, batches = _regression()
    reference = torch.nn.Linear(4, 1)
    reference.load_state_dict(model.state_dict())
    config = OptimizerConfig(optimizer="adamw", base_lr=1e-2, accum_grad=2)
    opt = build_optimizer(model.named_parameters(), config)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.0)
    for pair in (batches[:2], batches[2:]):
        before = [p.detach().clone() for p in model.parameters()]
        opt.step(_loss_fn(model, pair[0]))
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no update yet
        opt.step(_loss_fn(model, pair[1]))
        ref_opt.zero_grad()
        ((_loss_fn(reference, pair[0])() + _loss_fn(reference, pair[1])()) / 2).backward()
        ref_opt.step()
        assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(model.parameters(), reference.parameters()))
    assert opt.num_steps == 2 and opt.num_backwards == 4
    # a checkpoint between the two batches of an update keeps their gradients: resuming from it
    # gives the same update as going on
    import copy

    resumed, _ = _regression()
    resumed.load_state_dict(model.state_dict())
    opt.step(_loss_fn(model, batches[0]))
    state = copy.deepcopy(opt.state_dict())
    assert state["first_order"]["accumulated"] == 1 and state["first_order"]["grads"][0] is not None
    opt.step(_loss_fn(model, batches[1]))
    again = build_optimizer(resumed.named_parameters(), config)
    again.load_state_dict(state)
    again.step(_loss_fn(resumed, batches[1]))
    assert again.num_steps == opt.num_steps == 3
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))
    with pytest.raises(ValueError, match="first-order"):
        OptimizerConfig(optimizer="mezo", accum_grad=2).validate()
