"""Convolutional front end (icefall's ``encoder_embed``): (N, T, F) -> (N, (T-7)//2, D)."""

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from speechadapt.models.zipformer.scaling import (
    BiasNorm,
    ChannelsLastConv2d,
    FloatLike,
    ScaleGrad,
    ScheduledFloat,
    SharedDropout,
    SwooshL,
    SwooshR,
    scaled_conv2d,
)


class ConvNeXt(nn.Module):
    """Residual depthwise 7x7 conv -> pointwise expand -> SwooshL -> pointwise project."""

    def __init__(self, channels: int, hidden_ratio: int = 3,
                 kernel_size: Tuple[int, int] = (7, 7),
                 layerdrop_rate: Optional[FloatLike] = None):
        super().__init__()
        padding = ((kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2)
        hidden = channels * hidden_ratio
        self.layerdrop_rate = (
            ScheduledFloat((0.0, 0.2), (20000.0, 0.015)) if layerdrop_rate is None
            else layerdrop_rate
        )
        self.depthwise_conv = ChannelsLastConv2d(channels, channels, kernel_size,
                                                 groups=channels, padding=padding)
        self.pointwise_conv1 = ChannelsLastConv2d(channels, hidden, kernel_size=1)
        self.activation = SwooshL()
        self.pointwise_conv2 = scaled_conv2d(hidden, channels, kernel_size=1,
                                             initial_scale=0.01)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, C, T, F)."""
        residual = self.pointwise_conv2(
            self.activation(self.pointwise_conv1(self.depthwise_conv(x)))
        )
        rate = float(self.layerdrop_rate) if self.training else 0.0
        if rate > 0.0:
            keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device) > rate
            residual = residual * keep.to(x.dtype)
        return x + residual


def _conv_stack(layer1: int, layer2: int, layer3: int) -> nn.Sequential:
    # Indices match icefall's Sequential (balancers there are identity here), so the
    # convolutions are conv.0, conv.4 and conv.7 in the state_dict.
    return nn.Sequential(
        ChannelsLastConv2d(1, layer1, kernel_size=3, padding=(0, 1)),
        ScaleGrad(0.2),
        nn.Identity(),
        SwooshR(),
        ChannelsLastConv2d(layer1, layer2, kernel_size=3, stride=2, padding=0),
        nn.Identity(),
        SwooshR(),
        ChannelsLastConv2d(layer2, layer3, kernel_size=3, stride=(1, 2)),
        nn.Identity(),
        SwooshR(),
    )


class Conv2dSubsampling(nn.Module):
    """Conv2d subsampling to half the frame rate, then ConvNeXt, Linear and BiasNorm.

    Output length is (T - 7) // 2; inputs need T >= 9 frames.
    """

    def __init__(self, in_channels: int, out_channels: int, layer1_channels: int = 8,
                 layer2_channels: int = 32, layer3_channels: int = 128,
                 dropout: Optional[FloatLike] = None, pad_invariant: bool = False):
        super().__init__()
        if in_channels < 7:
            raise ValueError(f"Conv2dSubsampling needs >= 7 input channels, got {in_channels}")
        self.in_channels = in_channels
        self.pad_invariant = pad_invariant
        self.conv = _conv_stack(layer1_channels, layer2_channels, layer3_channels)
        self.convnext = ConvNeXt(layer3_channels, kernel_size=(7, 7))
        out_width = (((in_channels - 1) // 2) - 1) // 2
        self.out = nn.Linear(out_width * layer3_channels, out_channels)
        self.out_norm = BiasNorm(out_channels)
        if dropout is None:
            dropout = ScheduledFloat((0.0, 0.3), (20000.0, 0.1))
        # Mask shared over time: a dropped channel is dropped for the whole utterance.
        self.dropout = SharedDropout(dropout, shared_dim=1)

    def forward(self, x: Tensor, x_lens: Tensor, cache: Optional[dict] = None) -> Tuple[Tensor, Tensor]:
        """x: (N, T, F) features, x_lens: (N,) -> ((N, T', D), (N,)).

        ``cache`` (one batch, eval mode): when only ``out_norm`` is trainable (SUTA's norms),
        the convolutions and the projection before it run once and are reused."""
        if cache is not None and "embed_pre_norm" in cache:
            x, out_lens = cache["embed_pre_norm"]
            return self.dropout(self.out_norm(x)), out_lens
        x, out_lens = self._project(x, x_lens)
        if cache is not None and not any(p.requires_grad for m in (self.conv, self.convnext, self.out)
                                         for p in m.parameters()):
            cache["embed_pre_norm"] = (x, out_lens)
        return self.dropout(self.out_norm(x)), out_lens

    def _project(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        if x.ndim != 3 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"expected features of shape (N, T, {self.in_channels}), got {tuple(x.shape)}"
            )
        if x.shape[1] < 9:
            raise ValueError(f"need at least 9 frames, got {x.shape[1]}")
        out_lens = torch.div(x_lens - 7, 2, rounding_mode="floor")
        x = self.conv(x.unsqueeze(1))
        if self.pad_invariant:
            # Zero the frames past each input's end, as a lone input would be padded by
            # the ConvNeXt's 7x7 kernel (the valid frames only read valid input).
            valid = torch.arange(x.shape[2], device=x.device) < out_lens.unsqueeze(1)
            x = x * valid[:, None, :, None].to(x.dtype)
        x = self.convnext(x)
        n, c, t, f = x.shape
        x = x.transpose(1, 2).reshape(n, t, c * f)
        return self.out(x), out_lens
