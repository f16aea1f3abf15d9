"""Shorten a frozen encoder's output with its own CTC head before it reaches the LLM.

Frames whose most likely CTC label is blank are dropped and each run of frames with the
same label is averaged into one vector, so about one vector per BPE piece reaches the
LLM instead of ~6 stacked frames per second. The speech slot then reads like a token
sequence, which is what a tiny LLM pre-trained with copy examples can follow (CTC
compression of speech for sequence-to-sequence models, as in Gaido et al. 2021).
"""

from typing import Tuple

import torch
from torch import Tensor, nn


def compress_runs(frames: Tensor, lens: Tensor, labels: Tensor, blank_id: int) -> Tuple[Tensor, Tensor]:
    """(B, T, D) frames, (B,) lengths, (B, T) labels -> (B, S, D) run means, (B,) run counts.

    A run is a maximal stretch of non-blank frames with one label; two runs of one label
    apart by a blank stay two (CTC's "a _ a"). An utterance with no non-blank frame
    keeps one vector, the mean of all its frames, so no speech slot is ever empty.
    """
    batch, num_frames, dim = frames.shape
    valid = torch.arange(num_frames, device=frames.device).unsqueeze(0) < lens.unsqueeze(1)
    keep = valid & (labels != blank_id)
    silent = ~keep.any(dim=1, keepdim=True)
    keep = torch.where(silent, valid, keep)
    labels = torch.where(silent, torch.full_like(labels, -1), labels)  # one run per silent utterance
    prev_keep = torch.cat([torch.zeros_like(keep[:, :1]), keep[:, :-1]], dim=1)
    prev_label = torch.cat([torch.full_like(labels[:, :1], -2), labels[:, :-1]], dim=1)
    starts = keep & (~prev_keep | (labels != prev_label))
    run = starts.long().cumsum(dim=1) - 1  # run index of each kept frame
    counts = starts.sum(dim=1)
    max_runs = max(int(counts.max()) if batch else 0, 1)
    flat = (torch.arange(batch, device=frames.device).unsqueeze(1) * max_runs + run)[keep]
    sums = frames.new_zeros(batch * max_runs, dim).index_add_(0, flat, frames[keep])
    sizes = frames.new_zeros(batch * max_runs).index_add_(0, flat, frames.new_ones(flat.numel()))
    means = sums / sizes.clamp(min=1).unsqueeze(1)
    return means.reshape(batch, max_runs, dim), counts


class CtcCompressedEncoder(nn.Module):
    """A frozen encoder followed by CTC compression with its own (frozen) CTC head."""

    def __init__(self, encoder: nn.Module, ctc_linear: nn.Linear, blank_id: int = 0):
        super().__init__()
        self.encoder = encoder
        self.ctc_linear = ctc_linear
        self.blank_id = blank_id
        self.output_dim = encoder.output_dim

    def forward(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        out, out_lens = self.encoder(x, x_lens)
        labels = self.ctc_linear(out).argmax(dim=-1)
        return compress_runs(out, out_lens, labels, self.blank_id)
