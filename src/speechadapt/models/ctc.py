"""Zipformer-CTC: icefall's Zipformer encoder with its ``ctc_output`` head.

Implements the CTC-model protocol shared with the Hugging Face adapters:
``ctc_logits``, ``forward`` (log-probs), ``blank_id``, ``vocab_size``,
``greedy_decode``; plus ``ctc_loss`` (torch's CTC, no k2). state_dict keys are exactly
icefall's ``encoder_embed.*``, ``encoder.*`` and ``ctc_output.1.*``, so icefall CTC
checkpoints load strictly (``speechadapt.models.zipformer.checkpoint``).
"""

from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechadapt.models.zipformer import ZipformerBase, ZipformerConfig


def greedy_ctc_collapse(log_probs: Tensor, lengths: Tensor, blank_id: int) -> List[List[int]]:
    """Batched best-path decoding: argmax per frame, merge repeats, drop blanks.

    log_probs (or logits): (N, T, C); lengths: (N,) valid frames.
    """
    best = log_probs.argmax(dim=-1)  # (N, T)
    frames = torch.arange(best.shape[1], device=best.device)
    valid = frames.unsqueeze(0) < lengths.to(best.device).unsqueeze(1)
    changed = torch.ones_like(valid)
    changed[:, 1:] = best[:, 1:] != best[:, :-1]
    keep = valid & changed & (best != blank_id)
    return [row[mask].tolist() for row, mask in zip(best.cpu(), keep.cpu())]


class ZipformerCtc(ZipformerBase):
    """Zipformer encoder -> Dropout(0.1) -> Linear(D, vocab) -> LogSoftmax."""

    def __init__(self, config: Union[ZipformerConfig, dict, str], vocab_size: int,
                 blank_id: int = 0):
        super().__init__(config)
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 (blank + a symbol), got {vocab_size}")
        if not 0 <= blank_id < vocab_size:
            raise ValueError(f"blank_id {blank_id} outside [0, {vocab_size})")
        self.vocab_size = vocab_size
        self.blank_id = blank_id
        self.ctc_output = nn.Sequential(
            nn.Dropout(p=0.1), nn.Linear(self.output_dim, vocab_size), nn.LogSoftmax(dim=-1)
        )

    def ctc_logits(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        """(N, T, F) features -> (logits (N, T', vocab) before log-softmax, out_lens)."""
        encoder_out, out_lens = self.encode(x, x_lens)
        return self.ctc_output[1](self.ctc_output[0](encoder_out)), out_lens

    def forward(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        """(N, T, F) features -> (log_probs (N, T', vocab), out_lens)."""
        logits, out_lens = self.ctc_logits(x, x_lens)
        return self.ctc_output[2](logits), out_lens

    @torch.no_grad()
    def greedy_decode(self, x: Tensor, x_lens: Tensor) -> List[List[int]]:
        """Best-path token ids per input (repeats merged, blanks removed)."""
        logits, out_lens = self.ctc_logits(x, x_lens)
        return greedy_ctc_collapse(logits, out_lens, self.blank_id)

    def ctc_loss(self, x: Tensor, x_lens: Tensor,
                 targets: Sequence[Sequence[int]]) -> Tuple[Tensor, int]:
        """Summed CTC loss over the batch and the number of encoder output frames.

        Divide by the frames (or the utterances) to normalise, as icefall's trackers
        do. Impossible alignments (too few frames) give 0 (zero_infinity).
        """
        if len(targets) != x.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {x.shape[0]}")
        flat = [int(t) for seq in targets for t in seq]
        bad = [t for t in flat if t < 0 or t >= self.vocab_size or t == self.blank_id]
        if bad:
            raise ValueError(
                f"target ids must be in [0, {self.vocab_size}) and not the blank "
                f"{self.blank_id}; got e.g. {bad[:5]}"
            )
        log_probs, out_lens = self(x, x_lens)
        target_lens = torch.tensor([len(seq) for seq in targets], dtype=torch.long)
        loss = F.ctc_loss(
            log_probs.permute(1, 0, 2).float(),
            torch.tensor(flat, dtype=torch.long),
            out_lens.cpu().long(), target_lens,
            blank=self.blank_id, reduction="sum", zero_infinity=True,
        )
        return loss, int(out_lens.sum())
