"""LOZO: low-rank directions U V^T / sqrt(r) for matrices, V resampled every nu steps,
unbiased in expectation, no state of parameter size, exact resume."""

import torch
from torch import nn

from speechadapt.adapt.zo import ZOOptimizer

torch.set_num_threads(1)


def linear_task(seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = nn.Parameter(torch.randn(8, 6, generator=g))
    bias = nn.Parameter(torch.randn(6, generator=g))
    grad_w, grad_b = torch.randn(8, 6, generator=g), torch.randn(6, generator=g)
    loss = lambda: (weight * grad_w).sum() + (bias * grad_b).sum()  # noqa: E731  gradient = (grad_w, grad_b)
    return weight, bias, grad_w, grad_b, loss


def test_one_step_moves_a_matrix_within_rank_r_and_a_vector_freely():
    weight, bias, _, _, loss = linear_task()
    before_w, before_b = weight.detach().clone(), bias.detach().clone()
    opt = ZOOptimizer([weight, bias], lr=0.1, eps=1e-2, estimator="lozo", lozo_rank=2)
    opt.step(lambda g: loss())
    step = weight.detach() - before_w
    assert torch.linalg.matrix_rank(step).item() == 2
    assert (bias != before_b).all()  # a vector gets a full Gaussian direction
    # no state of parameter size: inference-level memory
    assert all(not any(torch.is_tensor(v) and v.numel() >= 6 for v in s.values()) for s in opt.state.values())


def test_estimate_is_unbiased_in_expectation():
    """E[-(update) / lr] = gradient, over U and V (nu = 1: a fresh V every step)."""
    weight, bias, grad_w, grad_b, loss = linear_task()
    start_w, start_b = weight.detach().clone(), bias.detach().clone()
    opt = ZOOptimizer([weight, bias], lr=1.0, eps=1e-2, estimator="lozo", lozo_rank=2, lozo_interval=1, seed=3)
    total_w, total_b, n = torch.zeros_like(grad_w), torch.zeros_like(grad_b), 3000
    for _ in range(n):
        with torch.no_grad():
            weight.copy_(start_w)
            bias.copy_(start_b)
        opt.step(lambda g: loss())
        total_w += start_w - weight.detach()
        total_b += start_b - bias.detach()
    mean_w, mean_b = total_w / n, total_b / n
    # each entry of a one-sample estimate has std ~ |grad| (about 7 here): 3000 samples -> ~0.13
    assert (mean_w - grad_w).abs().max() < 0.6 and (mean_b - grad_b).abs().max() < 0.6
    cosine = torch.nn.functional.cosine_similarity(mean_w.flatten(), grad_w.flatten(), dim=0)
    assert cosine > 0.97


def test_v_is_resampled_every_nu_steps_and_resume_is_exact():
    weight, bias, _, _, loss = linear_task()
    opt = ZOOptimizer([weight, bias], lr=1e-3, eps=1e-2, estimator="lozo", lozo_interval=3, seed=5)
    seeds = []
    for _ in range(7):
        opt.step(lambda g: loss())
        seeds.append(opt._lowrank.v_seed)
    assert seeds[0] == seeds[1] == seeds[2] != seeds[3] == seeds[4] == seeds[5] != seeds[6]
    state = opt.state_dict()
    w2, b2, _, _, _ = linear_task()
    with torch.no_grad():
        w2.copy_(weight)
        b2.copy_(bias)
    resumed = ZOOptimizer([w2, b2], lr=1e-3, eps=1e-2, estimator="lozo", lozo_interval=3, seed=99)
    resumed.load_state_dict(state)
    loss2 = lambda: (w2 * linear_task()[2]).sum() + (b2 * linear_task()[3]).sum()  # noqa: E731
    for _ in range(4):
        opt.step(lambda g: loss())
        resumed.step(lambda g: loss2())
    assert torch.equal(weight, w2) and torch.equal(bias, b2)


def test_chunked_walk_equals_whole_matrices():
    """z of a matrix split across chunks (mid-row boundaries) equals the unchunked one."""
    a = nn.Parameter(torch.zeros(7, 5))
    b = nn.Parameter(torch.zeros(7, 5))
    small = ZOOptimizer([a], lr=1.0, estimator="lozo", seed=1, chunk_size=3)
    whole = ZOOptimizer([b], lr=1.0, estimator="lozo", seed=1)
    small.step(lambda g: a.sum())
    whole.step(lambda g: b.sum())
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
