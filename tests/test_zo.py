"""Zeroth-order optimiser: estimate quality, exactness, memory discipline, learning."""

import math

import pytest
import torch
from torch import nn

from speechadapt.adapt.zo import ZOOptimizer
from speechadapt.adapt.zo_directions import SeededDraws

torch.set_num_threads(1)


def regression_task(seed: int, dim: int = 12, n: int = 128, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen, dtype=dtype)
    w_true = torch.randn(dim, 1, generator=gen, dtype=dtype)
    y = x @ w_true + 0.5
    torch.manual_seed(seed)
    model = nn.Linear(dim, 1).to(dtype)
    return model, x, y


def mse_fn(model, x, y):
    return lambda grad_enabled: ((model(x) - y) ** 2).mean()


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


def test_many_queries_point_along_the_true_gradient_with_the_right_scale():
    model, x, y = regression_task(0, dim=20, dtype=torch.float64)
    loss_fn = mse_fn(model, x, y)
    model.zero_grad()
    loss_fn(True).backward()
    true_grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    for p in model.parameters():
        p.grad = None
    before = flat_params(model)
    opt = ZOOptimizer(model.parameters(), lr=1.0, eps=1e-4, num_queries=2000, seed=3)
    opt.step(loss_fn)
    estimate = before - flat_params(model)  # lr = 1: the step is the estimate itself
    cosine = torch.nn.functional.cosine_similarity(estimate, true_grad, dim=0).item()
    ratio = (estimate.norm() / true_grad.norm()).item()
    assert cosine > 0.9, cosine
    assert 0.8 < ratio < 1.25, ratio


def test_the_update_averages_the_queries_rather_than_summing_them():
    # Averaged, the step stays at the gradient's scale for any q; summed (as the public
    # ZO-ASR code does) it would grow about 4x from q=16 to q=64.
    model, x, y = regression_task(1, dim=8, dtype=torch.float64)
    loss_fn = mse_fn(model, x, y)
    norms = []
    for q in (16, 64):
        start = [p.detach().clone() for p in model.parameters()]
        opt = ZOOptimizer(model.parameters(), lr=1.0, eps=1e-4, num_queries=q, seed=5)
        before = flat_params(model)
        opt.step(loss_fn)
        norms.append((before - flat_params(model)).norm().item())
        with torch.no_grad():
            for p, s in zip(model.parameters(), start):
                p.copy_(s)
    assert norms[1] < 2.0 * norms[0]


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(num_queries=4, momentum=0.9), dict(estimator="hizoo", weight_decay=0.1)],
)
def test_zero_lr_leaves_parameters_bit_exact(kwargs):
    model, x, y = regression_task(2)
    before = [p.detach().clone() for p in model.parameters()]
    opt = ZOOptimizer(model.parameters(), lr=0.0, **kwargs)
    for _ in range(3):
        loss = opt.step(mse_fn(model, x, y))
    assert math.isfinite(loss)
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)


def test_a_perturbation_cycle_restores_parameters_within_tolerance():
    model, x, y = regression_task(3)
    before = [p.detach().clone() for p in model.parameters()]
    opt = ZOOptimizer(model.parameters(), lr=0.1, eps=1e-2, num_queries=5)
    probe = opt.probe(mse_fn(model, x, y))
    assert len(probe.seeds) == 5 and all(g != 0 for g in probe.projected_grads(opt.eps))
    for p, b in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), b, rtol=0, atol=1e-6)


def test_no_grad_appears_and_forwards_run_in_inference_mode():
    model, x, y = regression_task(4)
    seen = []

    def loss_fn(grad_enabled):
        seen.append((grad_enabled, torch.is_inference_mode_enabled()))
        return ((model(x) - y) ** 2).mean()

    opt = ZOOptimizer(model.parameters(), lr=1e-2, num_queries=2, momentum=0.5)
    opt.step(loss_fn)
    assert seen == [(False, True)] * 4 == [(False, True)] * opt.forwards_per_step
    assert all(p.grad is None for p in model.parameters())
    assert all(not p.is_inference() for p in model.parameters())
    loss = ((model(x) - y) ** 2).mean()  # parameters still usable with autograd afterwards
    loss.backward()


def test_the_same_seed_regenerates_the_same_z():
    params = [torch.zeros(1000), torch.zeros(7, 9)]
    opt = ZOOptimizer(params, lr=0.1, chunk_size=64)
    opt.perturb(1234, 1.0)
    first = [p.clone() for p in params]
    opt.perturb(1234, -1.0)
    assert all(torch.count_nonzero(p) == 0 for p in params)  # exact: z - z
    opt.perturb(1234, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(first, params))
    opt.perturb(99, -1.0)
    assert not torch.equal(first[0], params[0])
    z = first[0]
    assert abs(z.mean().item()) < 0.15 and abs(z.std().item() - 1.0) < 0.1


def test_z_is_drawn_in_chunks_never_a_whole_parameter(monkeypatch):
    sizes = []
    real_normal = torch.Tensor.normal_

    def recording_normal(self, *args, **kwargs):
        sizes.append(self.numel())
        return real_normal(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "normal_", recording_normal)
    model = nn.Sequential(nn.Linear(100, 50), nn.LayerNorm(50))
    x = torch.randn(4, 100)
    opt = ZOOptimizer(model.parameters(), lr=1e-3, num_queries=2, chunk_size=256)
    opt.step(lambda g: model(x).pow(2).mean())
    assert sizes and max(sizes) <= 256
    # z is drawn 4q - 1 times: +eps, -2eps, +eps per query but the last restore is
    # fused into the update walk, which draws all q directions
    assert sum(sizes) == (4 * 2 - 1) * sum(p.numel() for p in model.parameters())


def test_seeded_draws_advance_in_lock_step():
    draws = SeededDraws([7, 8])
    a0, b0 = draws.draw(0, torch.empty(10)), draws.draw(1, torch.empty(10))
    again = SeededDraws([7])
    assert torch.equal(again.draw(0, torch.empty(10)), a0)
    assert not torch.equal(a0, b0)
    assert torch.equal(torch.randn(10, generator=torch.Generator().manual_seed(7)), a0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_queries=1, lr=0.02),
        dict(num_queries=8, lr=0.05),
        dict(num_queries=1, lr=0.002, momentum=0.9),
        dict(num_queries=1, lr=0.02, estimator="hizoo"),
    ],
)
def test_zo_lowers_the_loss_of_a_regression_task(seed, kwargs):
    model, x, y = regression_task(seed)
    loss_fn = mse_fn(model, x, y)
    with torch.no_grad():
        initial = loss_fn(False).item()
    opt = ZOOptimizer(model.parameters(), seed=seed, **kwargs)
    for _ in range(300):
        opt.step(loss_fn)
    with torch.no_grad():
        final = loss_fn(False).item()
    assert final < 0.2 * initial, (initial, final)


def test_weight_decay_skips_biases_and_norm_weights():
    model = nn.Linear(6, 3)
    weight, bias = model.weight.detach().clone(), model.bias.detach().clone()
    opt = ZOOptimizer(model.parameters(), lr=0.1, weight_decay=0.5)
    opt.step(lambda g: 0.0)  # a flat objective: only the decay acts
    torch.testing.assert_close(model.weight.detach(), weight * 0.95, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.bias.detach(), bias, rtol=0, atol=1e-6)


def test_non_finite_loss_skips_the_update_and_restores():
    model, x, y = regression_task(5)
    before = [p.detach().clone() for p in model.parameters()]
    opt = ZOOptimizer(model.parameters(), lr=0.1, num_queries=2)
    assert math.isnan(opt.step(lambda g: float("nan")))
    assert opt.num_skipped == 1
    for p, b in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), b, rtol=0, atol=1e-6)


def test_bad_arguments_are_rejected():
    p = [nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="eps"):
        ZOOptimizer(p, lr=0.1, eps=0)
    with pytest.raises(ValueError, match="estimator"):
        ZOOptimizer(p, lr=0.1, estimator="nope")
    with pytest.raises(ValueError, match="num_queries"):
        ZOOptimizer(p, lr=0.1, num_queries=0)
    with pytest.raises(ValueError, match="contiguous"):
        ZOOptimizer([torch.zeros(4, 5).t()], lr=0.1)
    with pytest.raises(TypeError, match="floating"):
        ZOOptimizer([torch.zeros(3, dtype=torch.long)], lr=0.1)


def test_tied_parameters_are_perturbed_once():
    shared = nn.Parameter(torch.zeros(50))
    opt = ZOOptimizer([("a", shared), ("b", shared)], lr=0.1)
    assert len(opt.params) == 1


@pytest.mark.gpu
def test_zo_on_cuda_regenerates_z_and_learns():
    model, x, y = regression_task(0)
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    opt = ZOOptimizer(model.parameters(), lr=0.02, chunk_size=5)
    params = [torch.zeros(40, device="cuda")]
    probe = ZOOptimizer(params, lr=0.1, chunk_size=7)
    probe.perturb(3, 1.0)
    first = params[0].clone()
    probe.perturb(3, -1.0)
    probe.perturb(3, 1.0)
    assert torch.equal(first, params[0])
    loss_fn = mse_fn(model, x, y)
    initial = float(loss_fn(False))
    for _ in range(300):
        opt.step(loss_fn)
    assert float(loss_fn(False)) < 0.2 * initial
