"""The batch every model reads, whatever its input: one place that knows the layout."""

from dataclasses import dataclass, field
from typing import List

import torch

INPUT_KINDS = ("fbank", "waveform")


@dataclass
class SpeechBatch:
    """A padded batch of utterances.

    ``inputs``: (B, T, 80) fbank frames or (B, S) 16 kHz mono samples (``input_kind``);
    ``input_lens``: (B,) valid frames or samples; ``durations``: seconds of audio per
    utterance (for real-time factors, whatever the input); ``texts``: transcripts
    ("" when the cuts have none, e.g. transcribing your own audio).
    """

    inputs: torch.Tensor
    input_lens: torch.Tensor
    texts: List[str]
    cut_ids: List[str]
    durations: List[float]
    input_kind: str = "fbank"
    cuts: list = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {self.input_kind!r}")
        expected_dim = 3 if self.input_kind == "fbank" else 2
        n = self.inputs.size(0)
        if self.inputs.dim() != expected_dim:
            raise ValueError(f"{self.input_kind} inputs must have {expected_dim} dims, got {tuple(self.inputs.shape)}")
        lengths = (len(self.texts), len(self.cut_ids), len(self.durations), self.input_lens.numel())
        if any(n_ != n for n_ in lengths):
            raise ValueError(f"batch of {n} inputs with {lengths} (texts, ids, durations, lengths)")

    def __len__(self) -> int:
        return self.inputs.size(0)

    def to(self, device) -> "SpeechBatch":
        """A copy with the tensors on ``device`` (the rest shared)."""
        return SpeechBatch(self.inputs.to(device), self.input_lens.to(device), self.texts, self.cut_ids,
                           self.durations, self.input_kind, self.cuts)

    @property
    def audio_seconds(self) -> float:
        return float(sum(self.durations))
