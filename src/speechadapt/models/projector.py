"""Speech-to-LLM projector: frame stacking by k, then a two-layer MLP with SwooshR.

The encoder runs at ~25 frames/s (Zipformer output); stacking k=4 frames brings it to
~6 embeddings/s before they enter the LLM, which keeps the prompt short.
"""

from typing import Optional, Tuple

import torch
from torch import nn


def stack_frames(x: torch.Tensor, x_lens: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, T, D) -> (B, T // k, k * D); the last T mod k frames are dropped.

    Lengths become ``x_lens // k``: a partial group at the end of an utterance is
    dropped too, so padding frames never leak into a stacked frame.
    """
    if x.dim() != 3:
        raise ValueError(f"stack_frames expects (B, T, D), got shape {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"stack factor k must be >= 1, got {k}")
    batch, frames, dim = x.shape
    usable = frames - frames % k
    stacked = x[:, :usable].reshape(batch, usable // k, k * dim)
    return stacked, torch.div(x_lens, k, rounding_mode="floor")


def _swoosh_r() -> nn.Module:
    # The Zipformer package owns the activation; one implementation in the project.
    from speechadapt.models.zipformer.scaling import SwooshR

    return SwooshR()


class FrameStackProjector(nn.Module):
    """Stack k frames, then Dropout, Linear(kD, H), SwooshR, Linear(H, H) and, with
    ``output_rms``, an RMS norm whose gain starts at ``output_rms``: the frames enter the
    LLM at the scale of its token embeddings (without it they started 9x larger on the
    synth recipe, and the speech raised the loss at initialisation)."""

    def __init__(self, in_dim: int, k: int, hidden: int, dropout: float = 0.1, output_rms: Optional[float] = None):
        super().__init__()
        if in_dim < 1 or hidden < 1:
            raise ValueError(f"projector dims must be positive (in_dim={in_dim}, hidden={hidden})")
        self.k = k
        self.in_dim = in_dim
        self.hidden = hidden
        self.dropout = nn.Dropout(dropout)
        self.linear1 = nn.Linear(in_dim * k, hidden)
        self.activation = _swoosh_r()
        self.linear2 = nn.Linear(hidden, hidden)
        self.out_norm = None
        if output_rms is not None:
            self.out_norm = nn.RMSNorm(hidden, eps=1e-6)
            with torch.no_grad():
                self.out_norm.weight.fill_(float(output_rms))

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if x.size(-1) != self.in_dim:
            raise ValueError(f"projector expects feature dim {self.in_dim}, got {x.size(-1)}")
        stacked, lens = stack_frames(x, x_lens, self.k)
        y = self.linear2(self.activation(self.linear1(self.dropout(stacked))))
        if self.out_norm is not None:
            y = self.out_norm(y)
        return y, lens
