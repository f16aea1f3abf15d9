"""CTC best paths: the one collapse every CTC model uses (greedy decoding, sampled paths)."""

from typing import List

import torch
from torch import Tensor


def collapse_paths(paths: Tensor, lengths: Tensor, blank_id: int) -> List[List[int]]:
    """Frame label paths (N, T) -> token ids: merge repeats, drop blanks, up to each length."""
    frames = torch.arange(paths.shape[1], device=paths.device)
    valid = frames.unsqueeze(0) < lengths.to(paths.device).unsqueeze(1)
    changed = torch.ones_like(valid)
    changed[:, 1:] = paths[:, 1:] != paths[:, :-1]
    keep = valid & changed & (paths != blank_id)
    return [row[mask].tolist() for row, mask in zip(paths.cpu(), keep.cpu())]


def greedy_ctc_collapse(logits: Tensor, lengths: Tensor, blank_id: int) -> List[List[int]]:
    """Batched best path: argmax per frame, then :func:`collapse_paths`.

    logits (or log-probs): (N, T, C); lengths: (N,) valid frames.
    """
    return collapse_paths(logits.argmax(dim=-1), lengths, blank_id)
