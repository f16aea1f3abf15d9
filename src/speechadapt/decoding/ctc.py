"""Greedy (best-path) CTC decoding: the one collapse every CTC model uses."""

from typing import List

import torch
from torch import Tensor


def greedy_ctc_collapse(logits: Tensor, lengths: Tensor, blank_id: int) -> List[List[int]]:
    """Batched best path: argmax per frame, merge repeats, drop blanks.

    logits (or log-probs): (N, T, C); lengths: (N,) valid frames.
    """
    best = logits.argmax(dim=-1)  # (N, T)
    frames = torch.arange(best.shape[1], device=best.device)
    valid = frames.unsqueeze(0) < lengths.to(best.device).unsqueeze(1)
    changed = torch.ones_like(valid)
    changed[:, 1:] = best[:, 1:] != best[:, :-1]
    keep = valid & changed & (best != blank_id)
    return [row[mask].tolist() for row, mask in zip(best.cpu(), keep.cpu())]
