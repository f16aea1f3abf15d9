"""The batch every model reads, whatever its input: one place that knows the layout."""

from dataclasses import dataclass, field
from typing import Iterator, List, Sequence

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

    def utterances(self) -> Iterator["SpeechBatch"]:
        """Each utterance alone, as a batch of one without padding (test-time adaptation)."""
        for i, n in enumerate(self.input_lens.tolist()):
            yield SpeechBatch(self.inputs[i: i + 1, : int(n)], self.input_lens[i: i + 1], self.texts[i: i + 1],
                              self.cut_ids[i: i + 1], self.durations[i: i + 1], self.input_kind,
                              self.cuts[i: i + 1])

    @property
    def audio_seconds(self) -> float:
        return float(sum(self.durations))

    @staticmethod
    def concat(batches: Sequence["SpeechBatch"]) -> "SpeechBatch":
        """One batch holding every utterance of ``batches`` (re-padded as the dataset pads:
        lhotse's LOG_EPSILON for fbank, zeros for waveforms), e.g. the batches DDP ranks
        see in one step, as one process would see them."""
        from lhotse.utils import LOG_EPSILON

        kinds = {b.input_kind for b in batches}
        if len(kinds) != 1:
            raise ValueError(f"cannot concatenate batches of input kinds {sorted(kinds)}")
        rows = [b.inputs[i, : int(n)] for b in batches for i, n in enumerate(b.input_lens.tolist())]
        lens = torch.tensor([r.shape[0] for r in rows], dtype=torch.long)
        pad = LOG_EPSILON if batches[0].input_kind == "fbank" else 0.0
        inputs = torch.full((len(rows), int(lens.max())) + tuple(rows[0].shape[1:]), pad, dtype=rows[0].dtype)
        for i, row in enumerate(rows):
            inputs[i, : row.shape[0]] = row
        return SpeechBatch(inputs, lens, [t for b in batches for t in b.texts], [c for b in batches for c in b.cut_ids],
                           [d for b in batches for d in b.durations], kinds.pop(), [c for b in batches for c in b.cuts])
