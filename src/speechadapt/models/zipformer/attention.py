"""Zipformer attention: relative positions, shared attention weights, two consumers.

Tensors are time-major, (T, N, C), as in icefall. One layer computes the attention
weights once (RelPositionMultiheadAttentionWeights) and reuses them in NonlinAttention
and in two SelfAttention modules.
"""

import math
from typing import Optional

import torch
from torch import Tensor, nn

from speechadapt.models.zipformer.scaling import (
    FloatLike,
    ScheduledFloat,
    coin,
    constant_rate,
    scaled_linear,
)


class CompactRelPositionalEncoding(nn.Module):
    """Embeddings of relative offsets -(T-1)..(T-1), compressed logarithmically.

    Offset x is squashed to atan(c * sign(x) * log((|x| + c) / c) / L) with
    c = sqrt(dim) and L = length_factor * dim / (2 pi); the embedding holds cos/sin
    of that angle times 1..dim/2, and its last entry is fixed at 1 (a bias term).
    """

    def __init__(self, embed_dim: int, dropout_rate: FloatLike = 0.15,
                 max_len: int = 1000, length_factor: float = 1.0):
        super().__init__()
        if embed_dim % 2 != 0:
            raise ValueError(f"pos_dim must be even, got {embed_dim}")
        if length_factor < 1.0:
            raise ValueError(f"length_factor must be >= 1, got {length_factor}")
        self.embed_dim = embed_dim
        self.length_factor = length_factor
        self.dropout_rate = (
            constant_rate(dropout_rate) if isinstance(dropout_rate, float) else dropout_rate
        )
        self.max_len = max_len
        self._table: Optional[Tensor] = None  # rows for offsets -(L-1)..(L-1), built lazily

    def _extend(self, length: int, device: torch.device) -> None:
        if self._table is not None and self._table.shape[0] >= 2 * length - 1:
            if self._table.device != device:
                self._table = self._table.to(device)
            return
        with torch.inference_mode(False), torch.no_grad():
            # an ordinary tensor even when first built under inference mode (a
            # zeroth-order step): training later reads it under autograd
            self._table = self._build(max(length, self.max_len), device)

    def _build(self, length: int, device: torch.device) -> Tensor:
        offsets = torch.arange(-(length - 1), length, device=device, dtype=torch.float32)
        offsets = offsets.unsqueeze(1)
        c = self.embed_dim ** 0.5
        compressed = c * offsets.sign() * ((offsets.abs() + c).log() - math.log(c))
        length_scale = self.length_factor * self.embed_dim / (2.0 * math.pi)
        angle = (compressed / length_scale).atan()
        freqs = 1 + torch.arange(self.embed_dim // 2, device=device)
        table = torch.zeros(offsets.shape[0], self.embed_dim, device=device)
        table[:, 0::2] = (angle * freqs).cos()
        table[:, 1::2] = (angle * freqs).sin()
        table[:, -1] = 1.0
        return table

    def forward(self, x: Tensor) -> Tensor:
        """x: (T, N, C) -> (1, 2T-1, pos_dim), offsets from -(T-1) to T-1."""
        seq_len = x.shape[0]
        self._extend(seq_len, x.device)
        center = self._table.shape[0] // 2
        pos_emb = self._table[center - seq_len + 1: center + seq_len].to(x.dtype)
        pos_emb = pos_emb.unsqueeze(0)
        return nn.functional.dropout(pos_emb, p=float(self.dropout_rate),
                                     training=self.training)


def _relative_to_absolute(pos_scores: Tensor, seq_len: int) -> Tensor:
    """(H, N, T, 2T-1) scores per relative offset -> (H, N, T, T) per key.

    Row i, key j reads column (T-1) - i + j, i.e. offset j - i; a strided view does
    this without copying.
    """
    pos_scores = pos_scores.contiguous()
    h, n, t, _ = pos_scores.shape
    s0, s1, s2, s3 = pos_scores.stride()
    return pos_scores.as_strided(
        (h, n, t, seq_len), (s0, s1, s2 - s3, s3),
        storage_offset=pos_scores.storage_offset() + s3 * (seq_len - 1),
    )


class RelPositionMultiheadAttentionWeights(nn.Module):
    """Attention weights (H, N, T, T) from content (q.k) and relative-position scores.

    ``in_proj`` packs, per frame, queries, keys and positional queries:
    (2 * query_head_dim + pos_head_dim) * num_heads outputs.
    """

    def __init__(self, embed_dim: int, pos_dim: int, num_heads: int, query_head_dim: int,
                 pos_head_dim: int, dropout: float = 0.0,
                 pos_emb_skip_rate: Optional[FloatLike] = None):
        super().__init__()
        self.num_heads = num_heads
        self.query_head_dim = query_head_dim
        self.pos_head_dim = pos_head_dim
        self.dropout = dropout
        self.pos_emb_skip_rate = (
            ScheduledFloat((0.0, 0.5), (4000.0, 0.0)) if pos_emb_skip_rate is None
            else pos_emb_skip_rate
        )
        in_proj_dim = (2 * query_head_dim + pos_head_dim) * num_heads
        self.in_proj = scaled_linear(embed_dim, in_proj_dim, bias=True,
                                     initial_scale=query_head_dim ** -0.25)
        self.linear_pos = scaled_linear(pos_dim, num_heads * pos_head_dim, bias=False,
                                        initial_scale=0.05)

    def forward(self, x: Tensor, pos_emb: Tensor, key_padding_mask: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None) -> Tensor:
        """x: (T, N, C); pos_emb: (1, 2T-1, pos_dim); key_padding_mask: (N, T), True = pad."""
        seq_len, batch_size, _ = x.shape
        heads, qd, pd = self.num_heads, self.query_head_dim, self.pos_head_dim
        x = self.in_proj(x)
        q = x[..., : qd * heads].reshape(seq_len, batch_size, heads, qd)
        k = x[..., qd * heads: 2 * qd * heads].reshape(seq_len, batch_size, heads, qd)
        p = x[..., 2 * qd * heads:].reshape(seq_len, batch_size, heads, pd)

        # (H, N, T, d) @ (H, N, d, T)
        scores = torch.matmul(q.permute(2, 1, 0, 3), k.permute(2, 1, 3, 0))

        skip_pos = self.training and coin(float(self.pos_emb_skip_rate))
        if not skip_pos:
            pos = self.linear_pos(pos_emb)  # (1, 2T-1, H * pd)
            pos = pos.reshape(-1, 2 * seq_len - 1, heads, pd).permute(2, 0, 3, 1)
            pos_scores = torch.matmul(p.permute(2, 1, 0, 3), pos)  # (H, N, T, 2T-1)
            scores = scores + _relative_to_absolute(pos_scores, seq_len)

        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask, -1000.0)
        if key_padding_mask is not None:
            if key_padding_mask.shape != (batch_size, seq_len):
                raise ValueError(
                    f"key_padding_mask shape {tuple(key_padding_mask.shape)} != "
                    f"{(batch_size, seq_len)}"
                )
            scores = scores.masked_fill(key_padding_mask.unsqueeze(1), -1000.0)
        weights = scores.softmax(dim=-1)
        return nn.functional.dropout(weights, p=self.dropout, training=self.training)


def _attend(weights: Tensor, values: Tensor) -> Tensor:
    """weights (H, N, T, T), values (T, N, H*d) -> (T, N, H*d)."""
    seq_len, batch_size, _ = values.shape
    heads = weights.shape[0]
    v = values.reshape(seq_len, batch_size, heads, -1).permute(2, 1, 0, 3)
    out = torch.matmul(weights, v)  # (H, N, T, d)
    return out.permute(2, 1, 0, 3).reshape(seq_len, batch_size, -1)


class SelfAttention(nn.Module):
    """Values from ``in_proj`` mixed by precomputed weights, then ``out_proj``."""

    def __init__(self, embed_dim: int, num_heads: int, value_head_dim: int):
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, num_heads * value_head_dim, bias=True)
        self.out_proj = scaled_linear(num_heads * value_head_dim, embed_dim, bias=True,
                                      initial_scale=0.05)

    def forward(self, x: Tensor, attn_weights: Tensor) -> Tensor:
        return self.out_proj(_attend(attn_weights, self.in_proj(x)))


class NonlinAttention(nn.Module):
    """Gated attention: tanh(s) * x is mixed over time by one head's weights, times y."""

    def __init__(self, channels: int, hidden_channels: int):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.in_proj = nn.Linear(channels, 3 * hidden_channels, bias=True)
        self.out_proj = scaled_linear(hidden_channels, channels, bias=True,
                                      initial_scale=0.05)

    def forward(self, x: Tensor, attn_weights: Tensor) -> Tensor:
        """attn_weights: (1, N, T, T) (the first head of the layer's weights)."""
        s, x, y = self.in_proj(x).chunk(3, dim=-1)
        x = _attend(attn_weights, x * torch.tanh(s))
        return self.out_proj(x * y)
