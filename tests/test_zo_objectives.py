"""ZO on a piecewise-constant objective (an error rate, like WER) versus a smoothed one."""

import torch
from torch import nn

from speechadapt.adapt.zo import ZOOptimizer

torch.set_num_threads(1)


def toy_classification():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=gen)
    labels = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    model = nn.Linear(2, 2)
    with torch.no_grad():  # start badly: mostly the wrong class
        model.weight.copy_(torch.tensor([[1.0, 0.5], [-1.0, -0.5]]))
        model.bias.zero_()
    return model, x, labels


def error_rate(model, x, labels):
    """0-1 error of the argmax decision: piecewise constant in the parameters."""
    return (model(x).argmax(dim=1) != labels).float().mean()


def expected_error(model, x, labels):
    """The same error in expectation over hypotheses sampled from softmax(logits)."""
    probs = model(x).softmax(dim=1)
    return 1.0 - probs.gather(1, labels[:, None]).mean()


def run(objective, eps, steps=150, lr=0.5, seed=0):
    model, x, labels = toy_classification()
    opt = ZOOptimizer(model.parameters(), lr=lr, eps=eps, num_queries=4, seed=seed)
    grads = []
    for _ in range(steps):
        opt.step(lambda g: objective(model, x, labels))
        grads.extend(opt.last_probe.projected_grads(opt.eps))
    with torch.no_grad():
        return error_rate(model, x, labels).item(), grads


def test_hard_error_with_tiny_eps_does_not_move():
    model, x, labels = toy_classification()
    initial = error_rate(model, x, labels).item()
    final, grads = run(error_rate, eps=1e-5, steps=20)
    assert initial > 0.9
    assert all(g == 0.0 for g in grads)  # L+ == L- every time: no signal
    assert final == initial


def test_smoothed_error_moves_and_lowers_the_hard_error():
    model, x, labels = toy_classification()
    initial = error_rate(model, x, labels).item()
    final, grads = run(expected_error, eps=1e-3)
    assert any(g != 0.0 for g in grads)
    assert final < initial - 0.5, (initial, final)


def test_hard_error_with_a_large_eps_gets_a_signal():
    _, grads = run(error_rate, eps=0.5, steps=20)
    assert sum(g != 0.0 for g in grads) > len(grads) // 2
