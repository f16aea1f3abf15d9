"""Building blocks shared by the Zipformer modules (pure torch, no k2).

What is kept from icefall's ``scaling.py`` and what is simplified:
- BiasNorm, SwooshL/SwooshR, ActivationDropoutAndLinear and the "scaled" initialisers
  compute exactly the same forward values (eval mode is icefall's inference).
- ScheduledFloat: a value that follows a piecewise-linear schedule of the training
  batch count (dropout rates, layer-skip rates ...). Eval mode always uses the
  default, as icefall does. See ``set_batch_count`` for the training-loop hook.
- Balancer, Whiten and the attention-score penalty only shape gradients in icefall;
  they are left out (identity). ``limit_param_value`` (a gradient-only limit on
  bypass scales and BiasNorm's log-scale) and the 0.2 gradient scale of the first
  subsampling conv are kept because they are one line each.
"""

import contextlib
import random
from typing import Iterator, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ScheduledFloat(nn.Module):
    """A float that follows ``points`` [(batch, value), ...] while training.

    ``batch_count`` is written by :func:`set_batch_count` (already multiplied by the
    encoder's ``schedule_scale``); while it is None, or in eval mode, the value is
    ``default`` (icefall's semantics). ``enabled=False`` (config.regularize=False)
    makes a regulariser rate 0 in training. Holds no parameters or buffers, so
    state_dict keys are unaffected.
    """

    def __init__(self, *points: Tuple[float, float], default: float = 0.0):
        super().__init__()
        if not points:
            raise ValueError("ScheduledFloat needs at least one (batch, value) point")
        xs = [float(x) for x, _ in points]
        if any(b <= a for a, b in zip(xs, xs[1:])):
            raise ValueError(f"schedule batch counts must increase: {xs}")
        self.points = [(float(x), float(y)) for x, y in points]
        self.default = float(default)
        self.batch_count: Optional[float] = None
        self.enabled = True

    def value_at(self, batch_count: float) -> float:
        """Piecewise-linear interpolation, constant outside the points."""
        pts = self.points
        if batch_count <= pts[0][0]:
            return pts[0][1]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if batch_count <= x1:
                return y0 + (y1 - y0) * (batch_count - x0) / (x1 - x0)
        return pts[-1][1]

    def __float__(self) -> float:
        if not self.training:
            return self.default
        if not self.enabled:
            return 0.0
        if self.batch_count is None:
            return self.default
        return self.value_at(self.batch_count)

    def extra_repr(self) -> str:
        return f"points={self.points}, default={self.default}, batch_count={self.batch_count}"


FloatLike = Union[float, ScheduledFloat]


def constant_rate(value: float) -> ScheduledFloat:
    """A fixed training-time rate that ``regularize=False`` can still switch off."""
    return ScheduledFloat((0.0, value), default=value)


def set_batch_count(model: nn.Module, batch_count: float) -> None:
    """Training-loop hook: advance every Zipformer schedule inside ``model``.

    Call it before each training step with the number of updates done so far
    (icefall calls it with its ``batch_idx_train``, rescaled by max-duration). Each
    Zipformer encoder found in ``model`` multiplies the count by its
    ``config.schedule_scale``; ScheduledFloats outside any encoder get the raw count.
    """
    handled = set()
    for module in model.modules():
        setter = getattr(module, "set_schedule_batch_count", None)
        if callable(setter):
            setter(batch_count)
            handled.update(id(m) for m in module.modules())
    for module in model.modules():
        if isinstance(module, ScheduledFloat) and id(module) not in handled:
            module.batch_count = float(batch_count)


class _LimitParamValue(torch.autograd.Function):
    """Identity forward; backward flips gradients that push x further out of range."""

    @staticmethod
    def forward(ctx, x: Tensor, low: float, high: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.low, ctx.high = low, high
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        # A descent step moves x by -grad: grad > 0 lowers x, grad < 0 raises it.
        outward = ((x < ctx.low) & (grad > 0)) | ((x > ctx.high) & (grad < 0))
        return torch.where(outward, -grad, grad), None, None


def limit_param_value(x: Tensor, low: float, high: float, training: bool) -> Tensor:
    if not training or not x.requires_grad:
        return x
    return _LimitParamValue.apply(x, float(low), float(high))


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.alpha, None


class ScaleGrad(nn.Module):
    """Identity forward, gradient multiplied by ``alpha`` while training."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not x.requires_grad:
            return x
        return _ScaleGrad.apply(x, self.alpha)


_PLAIN_KERNELS = [False]


@contextlib.contextmanager
def plain_kernels() -> Iterator[None]:
    """Within it, the Swoosh activations are plain autograd ops and ChannelsLastConv2d a
    plain nn.Conv2d: the straightforward computation, which tests and bench/ compare the
    faster kernels below against."""
    before = _PLAIN_KERNELS[0]
    _PLAIN_KERNELS[0] = True
    try:
        yield
    finally:
        _PLAIN_KERNELS[0] = before


# Swoosh(x) = softplus(x - shift) - 0.08 x - offset; derivative sigmoid(x - shift) - 0.08.
# As autograd ops that is five full-size results per call; the function below writes
# one (in place), saves only x and builds the derivative in backward. On CPU this made
# the tiny encoder's no-grad forward (decoding, ZO queries) about a tenth faster.
_SWOOSH = {"l": (4.0, 0.035), "r": (1.0, 0.313261687)}


def _swoosh_value(x: Tensor, shift: float, offset: float) -> Tensor:
    return F.softplus(x - shift).add_(x, alpha=-0.08).sub_(offset)


class _Swoosh(torch.autograd.Function):
    generate_vmap_rule = True  # torch.func (ZO's batched queries) may call it

    @staticmethod
    def forward(x: Tensor, shift: float, offset: float) -> Tensor:
        return _swoosh_value(x, shift, offset)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])
        ctx.shift = inputs[1]

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        return torch.sigmoid(x - ctx.shift).sub_(0.08).mul_(grad), None, None


def _swoosh(x: Tensor, kind: str) -> Tensor:
    shift, offset = _SWOOSH[kind]
    if _PLAIN_KERNELS[0]:
        return F.softplus(x - shift) - 0.08 * x - offset
    if torch.is_grad_enabled() and x.requires_grad:
        return _Swoosh.apply(x, shift, offset)
    return _swoosh_value(x, shift, offset)


def swoosh_l(x: Tensor) -> Tensor:
    """SwooshL(x) = log(1 + exp(x - 4)) - 0.08 x - 0.035."""
    return _swoosh(x, "l")


def swoosh_r(x: Tensor) -> Tensor:
    """SwooshR(x) = log(1 + exp(x - 1)) - 0.08 x - 0.313261687."""
    return _swoosh(x, "r")


class SwooshL(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return swoosh_l(x)


class SwooshR(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return swoosh_r(x)


_ACTIVATIONS = {"SwooshL": swoosh_l, "SwooshR": swoosh_r}


def shared_dropout(x: Tensor, p: float, shared_dim: Optional[int], training: bool) -> Tensor:
    """Dropout whose mask is shared along ``shared_dim`` (e.g. all frames of a channel)."""
    if not training or p <= 0.0:
        return x
    if shared_dim is None:
        return F.dropout(x, p=p, training=True)
    mask_shape = list(x.shape)
    mask_shape[shared_dim] = 1
    keep = (torch.rand(mask_shape, device=x.device, dtype=x.dtype) >= p).to(x.dtype)
    return x * keep * (1.0 / (1.0 - p))


class SharedDropout(nn.Module):
    """Dropout with a (possibly scheduled) rate and a mask shared along one dim."""

    def __init__(self, p: FloatLike, shared_dim: Optional[int] = None):
        super().__init__()
        self.p = p
        self.shared_dim = shared_dim

    def forward(self, x: Tensor) -> Tensor:
        return shared_dropout(x, float(self.p), self.shared_dim, self.training)


def _scale_init_(module: nn.Module, initial_scale: float) -> None:
    # icefall's "Scaled*" layers: the default init with a smaller weight scale and a
    # small uniform bias; only the initial values differ from plain layers.
    with torch.no_grad():
        module.weight.mul_(initial_scale)
        if getattr(module, "bias", None) is not None:
            nn.init.uniform_(module.bias, -0.1 * initial_scale, 0.1 * initial_scale)


def scaled_linear(in_features: int, out_features: int, bias: bool = True,
                  initial_scale: float = 1.0) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=bias)
    _scale_init_(layer, initial_scale)
    return layer


class ChannelsLastConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and state_dict) that convolves in channels-last layout
    on CPU, where oneDNN is much faster in it (the front end's depthwise 7x7 backward
    2.6x, measured). The output stays channels-last, so a chain of these converts once.
    Other devices run the plain convolution."""

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or _PLAIN_KERNELS[0]:
            return super().forward(x)
        layout = torch.channels_last
        return self._conv_forward(x.contiguous(memory_format=layout),
                                  self.weight.contiguous(memory_format=layout), self.bias)


def scaled_conv2d(*args, initial_scale: float = 1.0, **kwargs) -> nn.Conv2d:
    layer = ChannelsLastConv2d(*args, **kwargs)
    _scale_init_(layer, initial_scale)
    return layer


class ActivationDropoutAndLinear(nn.Module):
    """activation -> dropout (mask shared along one dim) -> linear.

    Parameters are ``weight`` (out, in) and ``bias`` (out,), as in icefall.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True,
                 activation: str = "SwooshL", dropout_p: FloatLike = 0.0,
                 dropout_shared_dim: Optional[int] = -1, initial_scale: float = 1.0):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}")
        layer = scaled_linear(in_channels, out_channels, bias, initial_scale)
        self.weight = layer.weight
        self.bias = layer.bias
        self.activation = activation
        self.dropout_p = dropout_p
        self.dropout_shared_dim = dropout_shared_dim

    def forward(self, x: Tensor) -> Tensor:
        x = _ACTIVATIONS[self.activation](x)
        x = shared_dropout(x, float(self.dropout_p), self.dropout_shared_dim, self.training)
        return F.linear(x, self.weight, self.bias)


class BiasNorm(nn.Module):
    """x * exp(log_scale) / rms(x - bias) over ``channel_dim`` (the bias only enters the rms)."""

    def __init__(self, num_channels: int, channel_dim: int = -1, log_scale: float = 1.0,
                 log_scale_min: float = -1.5, log_scale_max: float = 1.5):
        super().__init__()
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.log_scale = nn.Parameter(torch.tensor(float(log_scale)))
        bias = torch.empty(num_channels)
        if bias.device.type != "meta":  # random init on meta pulls in heavy imports
            bias.normal_(mean=0.0, std=1e-4)
        self.bias = nn.Parameter(bias)
        self.log_scale_min = log_scale_min
        self.log_scale_max = log_scale_max

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[self.channel_dim] != self.num_channels:
            raise ValueError(
                f"BiasNorm expects {self.num_channels} channels on dim {self.channel_dim}, "
                f"got shape {tuple(x.shape)}"
            )
        dim = self.channel_dim % x.ndim
        bias = self.bias.reshape([-1] + [1] * (x.ndim - dim - 1))
        log_scale = limit_param_value(
            self.log_scale, self.log_scale_min, self.log_scale_max, self.training
        )
        scales = torch.mean((x - bias) ** 2, dim=dim, keepdim=True) ** -0.5
        return x * (scales * log_scale.exp())


def convert_num_channels(x: Tensor, num_channels: int) -> Tensor:
    """Truncate or zero-pad the last dim to ``num_channels``."""
    if num_channels <= x.shape[-1]:
        return x[..., :num_channels]
    pad = torch.zeros(*x.shape[:-1], num_channels - x.shape[-1], dtype=x.dtype, device=x.device)
    return torch.cat((x, pad), dim=-1)


def sequence_mask(batch_size: int, rate: float, like: Tensor, training: bool) -> Optional[Tensor]:
    """(batch, 1) 0/1 mask that drops whole sequences with probability ``rate``."""
    if not training or rate <= 0.0:
        return None
    return (torch.rand(batch_size, 1, device=like.device) > rate).to(like.dtype)


def coin(rate: float) -> bool:
    """True with probability ``rate`` (host-side randomness, like icefall's)."""
    return rate > 0.0 and random.random() < rate


def make_pad_mask(lengths: Tensor, max_len: int = 0) -> Tensor:
    """(N, T) bool mask, True on padded frames."""
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {tuple(lengths.shape)}")
    max_len = max(max_len, int(lengths.max()))
    frames = torch.arange(max_len, device=lengths.device)
    return frames.unsqueeze(0) >= lengths.unsqueeze(1)
