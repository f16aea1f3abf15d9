"""The Zipformer's faster CPU kernels (fused Swoosh, channels-last front-end convolutions)
compute what the plain autograd ops compute, forward and backward."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from speechadapt.models.zipformer import ZipformerEncoder, get_preset, set_batch_count
from speechadapt.models.zipformer.scaling import ChannelsLastConv2d, plain_kernels, swoosh_l, swoosh_r


def _formula(x, kind):
    shift, offset = (4.0, 0.035) if kind == "l" else (1.0, 0.313261687)
    return F.softplus(x - shift) - 0.08 * x - offset


@pytest.mark.parametrize("kind,fn", [("l", swoosh_l), ("r", swoosh_r)])
def test_swoosh_value_and_gradient_equal_the_formula(kind, fn):
    torch.manual_seed(0)
    x = (torch.randn(4, 7, 9, dtype=torch.float64) * 6).requires_grad_()
    y = fn(x)
    assert y.grad_fn is not None and "Swoosh" in type(y.grad_fn).__name__
    torch.testing.assert_close(y, _formula(x, kind), rtol=0, atol=1e-12)
    weight = torch.randn_like(y)
    (grad,) = torch.autograd.grad((y * weight).sum(), x)
    (expected,) = torch.autograd.grad((_formula(x, kind) * weight).sum(), x)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(fn, (x[:2, :3, :4].detach().requires_grad_(),))
    with torch.no_grad():  # the in-place no-grad path
        torch.testing.assert_close(fn(x), _formula(x, kind), rtol=0, atol=1e-12)
    x.grad = None
    before = x.detach().clone()
    fn(x.detach())
    assert torch.equal(x.detach(), before), "the no-grad path must not write into its input"


def test_swoosh_under_vmap_matches_a_loop():
    x = torch.randn(3, 5, 6)
    torch.testing.assert_close(torch.func.vmap(swoosh_l)(x), torch.stack([swoosh_l(r) for r in x]))
    w = torch.randn(3, 5, 6, requires_grad=True)
    out = torch.func.vmap(lambda a, b: swoosh_r(a * b))(x, w)
    (grad,) = torch.autograd.grad(out.sum(), w)
    (expected,) = torch.autograd.grad(_formula(x * w, "r").sum(), w)
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("kwargs", [dict(in_channels=8, out_channels=16, kernel_size=3, stride=2),
                                    dict(in_channels=16, out_channels=16, kernel_size=7,
                                         groups=16, padding=3),
                                    dict(in_channels=1, out_channels=8, kernel_size=3,
                                         padding=(0, 1))])
def test_channels_last_conv_equals_conv2d(kwargs):
    torch.manual_seed(0)
    fast = ChannelsLastConv2d(**kwargs)
    plain = nn.Conv2d(**kwargs)
    assert list(fast.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(3, kwargs["in_channels"], 21, 17, requires_grad=True)
    y_fast, y_plain = fast(x), plain(x)
    if kwargs["in_channels"] > 1:  # a one-channel input has no distinct layout
        assert y_fast.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_fast, y_plain, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y_plain)
    grads_fast = torch.autograd.grad(y_fast, (x, fast.weight, fast.bias), g)
    grads_plain = torch.autograd.grad(y_plain, (x, plain.weight, plain.bias), g)
    for a, b in zip(grads_fast, grads_plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with plain_kernels():
        assert not fast(x).is_contiguous(memory_format=torch.channels_last) or kwargs["in_channels"] == 1


def test_tiny_encoder_training_step_equals_plain_kernels():
    torch.manual_seed(0)
    model = ZipformerEncoder(get_preset("tiny", regularize=False)).train()
    set_batch_count(model, 20000)
    x = torch.randn(3, 230, 80)
    x_lens = torch.tensor([230, 200, 160])

    def run():
        out, out_lens = model(x, x_lens)
        loss = (out.pow(2).sum(-1).sqrt() * (torch.arange(out.shape[1]) < out_lens[:, None])).sum()
        grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad],
                                    allow_unused=True)
        return out.detach(), grads

    torch.manual_seed(1)
    out_fast, grads_fast = run()
    with plain_kernels():
        torch.manual_seed(1)
        out_plain, grads_plain = run()
    torch.testing.assert_close(out_fast, out_plain, rtol=1e-4, atol=1e-5)
    pairs = [(a, b) for a, b in zip(grads_fast, grads_plain) if b is not None]
    assert len(pairs) > 100 and all(a is not None for a, _ in pairs)
    flat_fast = torch.cat([a.flatten() for a, _ in pairs])
    flat_plain = torch.cat([b.flatten() for _, b in pairs])
    # float32 sums in another order: close overall and in every element, relative to
    # the largest gradient (single elements of small tensors cancel to near zero)
    assert (flat_fast - flat_plain).norm() / flat_plain.norm() < 1e-4
    assert (flat_fast - flat_plain).abs().max() < 1e-4 * flat_plain.abs().max()
    # and the two differ from a model whose weights differ, so the comparison can fail
    with torch.no_grad():
        model.encoder_embed.convnext.depthwise_conv.weight.mul_(1.5)
    torch.manual_seed(1)
    assert not torch.allclose(run()[0], out_plain, rtol=1e-4, atol=1e-5)
