"""Zipformer feed-forward, convolution, bypass and frame-rate change modules.

Tensors are time-major, (T, N, C), as in icefall.
"""

from typing import Optional

import torch
from torch import Tensor, nn

from speechadapt.models.zipformer.scaling import (
    ActivationDropoutAndLinear,
    FloatLike,
    ScheduledFloat,
    limit_param_value,
)


class FeedforwardModule(nn.Module):
    """Linear -> SwooshL -> dropout (shared over time) -> Linear."""

    def __init__(self, embed_dim: int, feedforward_dim: int, dropout: FloatLike):
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, feedforward_dim)
        self.out_proj = ActivationDropoutAndLinear(
            feedforward_dim, embed_dim, activation="SwooshL", dropout_p=dropout,
            dropout_shared_dim=0, bias=True, initial_scale=0.1,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.out_proj(self.in_proj(x))


class ChunkCausalDepthwiseConv1d(nn.Module):
    """Depthwise conv that never looks past the end of the current chunk.

    Sum of a causal conv (left half of the kernel, left context from earlier
    chunks) and a full-kernel conv run inside each chunk, whose output is scaled
    near chunk edges by learnt per-channel factors (1 + chunkwise_conv_scale).
    """

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.causal_conv = nn.Conv1d(channels, channels, (kernel_size + 1) // 2,
                                     groups=channels, padding=0, bias=True)
        self.chunkwise_conv = nn.Conv1d(channels, channels, kernel_size, groups=channels,
                                        padding=kernel_size // 2, bias=True)
        self.chunkwise_conv_scale = nn.Parameter(torch.zeros(2, channels, kernel_size))

    def forward(self, x: Tensor, chunk_size: int = -1) -> Tensor:
        """x: (N, C, T)."""
        batch, channels, seq_len = x.shape
        if chunk_size < 0 or chunk_size > seq_len:
            chunk_size = seq_len
        left_pad = self.kernel_size // 2
        right_pad = -seq_len % chunk_size
        x = nn.functional.pad(x, (left_pad, right_pad))
        causal = self.causal_conv(x[..., : left_pad + seq_len])

        chunks = x[..., left_pad:]
        num_chunks = chunks.shape[2] // chunk_size
        chunks = chunks.reshape(batch, channels, num_chunks, chunk_size).permute(0, 2, 1, 3)
        chunks = self.chunkwise_conv(chunks.reshape(batch * num_chunks, channels, chunk_size))
        chunks = chunks * self._edge_scale(chunk_size)
        chunks = chunks.reshape(batch, num_chunks, channels, chunk_size).permute(0, 2, 1, 3)
        chunks = chunks.reshape(batch, channels, num_chunks * chunk_size)[..., :seq_len]
        return chunks + causal

    def _edge_scale(self, chunk_size: int) -> Tensor:
        left, right = self.chunkwise_conv_scale[0], self.chunkwise_conv_scale[1]
        if chunk_size < self.kernel_size:
            left, right = left[:, :chunk_size], right[:, -chunk_size:]
        else:
            pad = left.new_zeros(left.shape[0], chunk_size - self.kernel_size)
            left, right = torch.cat((left, pad), dim=-1), torch.cat((pad, right), dim=-1)
        return 1.0 + left + right


class ConvolutionModule(nn.Module):
    """Linear -> GLU-style sigmoid gate -> depthwise conv over time -> SwooshR -> Linear."""

    def __init__(self, channels: int, kernel_size: int, causal: bool = False):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"cnn_module_kernel must be odd, got {kernel_size}")
        self.causal = causal
        self.in_proj = nn.Linear(channels, 2 * channels)
        if causal:
            self.depthwise_conv = ChunkCausalDepthwiseConv1d(channels, kernel_size)
        else:
            self.depthwise_conv = nn.Conv1d(channels, channels, kernel_size, groups=channels,
                                            padding=kernel_size // 2)
        self.out_proj = ActivationDropoutAndLinear(
            channels, channels, activation="SwooshR", dropout_p=0.0, initial_scale=0.05,
        )

    def forward(self, x: Tensor, src_key_padding_mask: Optional[Tensor] = None,
                chunk_size: int = -1) -> Tensor:
        x, gate = self.in_proj(x).chunk(2, dim=-1)
        x = (x * torch.sigmoid(gate)).permute(1, 2, 0)  # (N, C, T)
        if src_key_padding_mask is not None:
            # Padded frames must not leak into valid ones through the kernel.
            x = x.masked_fill(src_key_padding_mask.unsqueeze(1), 0.0)
        if self.causal:
            x = self.depthwise_conv(x, chunk_size=chunk_size)
        else:
            x = self.depthwise_conv(x)
        return self.out_proj(x.permute(2, 0, 1))


class BypassModule(nn.Module):
    """out = orig + (new - orig) * bypass_scale, with per-sequence skipping in training.

    A sequence skipped (probability ``skip_rate``) keeps ``orig``. In training the
    scale's gradient is limited to [scale_min, scale_max]; eval uses it as stored.
    """

    def __init__(self, embed_dim: int, skip_rate: FloatLike = 0.0,
                 straight_through_rate: FloatLike = 0.0,
                 scale_min: Optional[FloatLike] = None, scale_max: FloatLike = 1.0):
        super().__init__()
        self.bypass_scale = nn.Parameter(torch.full((embed_dim,), 0.5))
        self.skip_rate = skip_rate
        self.straight_through_rate = straight_through_rate
        self.scale_min = (
            ScheduledFloat((0.0, 0.9), (20000.0, 0.2), default=0.0) if scale_min is None
            else scale_min
        )
        self.scale_max = scale_max

    def _scale(self, batch_size: int) -> Tensor:
        if not self.training:
            return self.bypass_scale
        scale = limit_param_value(self.bypass_scale, float(self.scale_min),
                                  float(self.scale_max), training=True)
        skip_rate = float(self.skip_rate)
        if skip_rate > 0.0:
            keep = torch.rand(batch_size, 1, device=scale.device) > skip_rate
            scale = scale * keep.to(scale.dtype)
        straight_rate = float(self.straight_through_rate)
        if straight_rate > 0.0:
            through = torch.rand(batch_size, 1, device=scale.device) < straight_rate
            scale = torch.maximum(scale, through.to(scale.dtype))
        return scale

    def forward(self, src_orig: Tensor, src: Tensor) -> Tensor:
        return src_orig + (src - src_orig) * self._scale(src.shape[1])


class SimpleDownsample(nn.Module):
    """Downsample in time by a softmax(bias)-weighted sum of each group of frames.

    The last group is completed by repeating the last frame.
    """

    def __init__(self, channels: int, downsample: int):
        super().__init__()
        self.downsample = downsample
        self.bias = nn.Parameter(torch.zeros(downsample))

    def forward(self, src: Tensor) -> Tensor:
        seq_len, batch_size, channels = src.shape
        ds = self.downsample
        out_len = (seq_len + ds - 1) // ds
        pad = out_len * ds - seq_len
        if pad:
            src = torch.cat((src, src[-1:].expand(pad, batch_size, channels)), dim=0)
        src = src.reshape(out_len, ds, batch_size, channels)
        weights = self.bias.softmax(dim=0).reshape(1, ds, 1, 1)
        return (src * weights).sum(dim=1)


class SimpleUpsample(nn.Module):
    """Repeat every frame ``upsample`` times."""

    def __init__(self, channels: int, upsample: int):
        super().__init__()
        self.upsample = upsample

    def forward(self, src: Tensor) -> Tensor:
        return src.repeat_interleave(self.upsample, dim=0)
