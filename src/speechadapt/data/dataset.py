"""The map-style dataset behind every dataloader: a CutSet mini-batch -> SpeechBatch.

The input strategy decides what the model reads from the same cuts:

* ``fbank``: 80-dim log-mel frames, read from the cuts' stored features (lhotse's
  ``PrecomputedFeatures``) or, when asked or when a cut has none, computed on the fly
  from its audio with the same lhotse ``Fbank`` settings as the fbank stage;
* ``waveform``: 16 kHz mono samples (wav2vec2, HuBERT, Whisper); a recording at
  another rate is resampled and a multi-channel one mixed down.

As lhotse's ``K2SpeechRecognitionDataset`` does, cuts are sorted by duration
(longest first) before and after the cut transforms (noise mixing), and the input
transforms (SpecAugment) get the supervision segments. Transcripts are the cut's
supervision texts in time order; a cut without any (or with an empty one) is an error
naming the cut, unless the dataset is built with ``require_text=False``.
"""

import logging
from typing import Callable, List, Sequence

import torch
from lhotse import CutSet, Fbank, FbankConfig
from lhotse.dataset.collation import collate_matrices
from lhotse.dataset.input_strategies import AudioSamples, OnTheFlyFeatures, PrecomputedFeatures
from lhotse.utils import LOG_EPSILON

from speechadapt.data.batch import INPUT_KINDS, SpeechBatch

SAMPLE_RATE = 16000
NUM_MEL_BINS = 80


class MissingTranscriptError(ValueError):
    """A training or scoring cut without a transcript; the message names the cut."""


class AudioReadError(ValueError):
    """A cut whose audio cannot be read; the message names the cut and the file."""


def fbank_extractor() -> Fbank:
    """The one fbank configuration (the fbank stage, on-the-fly features, transcribe)."""
    return Fbank(FbankConfig(num_mel_bins=NUM_MEL_BINS))


def cut_text(cut, require_text: bool = True) -> str:
    """The transcript of a cut: its supervision texts in time order, space-joined."""
    texts = [" ".join((s.text or "").split()) for s in sorted(cut.supervisions, key=lambda s: s.start)]
    text = " ".join(t for t in texts if t)
    if require_text and not text:
        what = "no supervision" if not cut.supervisions else "an empty transcript"
        raise MissingTranscriptError(f"cut {cut.id} has {what}; every training and test cut needs one")
    return text


def load_mono(cut) -> torch.Tensor:
    """A cut's samples as a float tensor, channels averaged; a failure names the cut
    and its audio file."""
    try:
        audio = cut.load_audio()
    except Exception as e:  # lhotse wraps every backend's failure differently
        sources = [s.source for s in getattr(getattr(cut, "recording", None), "sources", [])]
        where = f" ({', '.join(sources)})" if sources else ""
        raise AudioReadError(f"cut {cut.id}{where}: cannot read audio ({type(e).__name__}: {e})") from e
    wave = torch.from_numpy(audio).float()
    return wave.mean(dim=0) if wave.dim() == 2 else wave


def _at_rate(cuts: CutSet, rate: int) -> CutSet:
    if all(c.sampling_rate == rate for c in cuts):
        return cuts
    return CutSet.from_cuts(c.resample(rate) if c.sampling_rate != rate else c for c in cuts)


class SpeechDataset(torch.utils.data.Dataset):
    """Indexed by a CutSet mini-batch (from a lhotse sampler), returns a SpeechBatch."""

    def __init__(
        self,
        input_kind: str = "fbank",
        on_the_fly_feats: bool = False,
        cut_transforms: Sequence[Callable] = (),
        input_transforms: Sequence[Callable] = (),
        require_text: bool = True,
        keep_cuts: bool = True,
    ):
        if input_kind not in INPUT_KINDS:
            raise ValueError(f"input kind must be one of {INPUT_KINDS}, got {input_kind!r}")
        self.input_kind = input_kind
        self.on_the_fly_feats = on_the_fly_feats
        self.cut_transforms = list(cut_transforms)
        self.input_transforms = list(input_transforms)
        self.require_text = require_text
        self.keep_cuts = keep_cuts
        self._precomputed = PrecomputedFeatures()
        self._extractor = fbank_extractor()
        # lhotse's strategies give the supervision intervals; samples are read by load_mono
        # (channels averaged) and on-the-fly fbank computed here, as lhotse would, padded
        # with its LOG_EPSILON.
        self._on_the_fly = OnTheFlyFeatures(self._extractor)
        self._audio = AudioSamples()

    def __getitem__(self, cuts: CutSet) -> SpeechBatch:
        cuts = cuts.sort_by_duration(ascending=False)
        for transform in self.cut_transforms:
            cuts = transform(cuts)
        cuts = cuts.sort_by_duration(ascending=False)
        texts = [cut_text(c, self.require_text) for c in cuts]
        inputs, lens, strategy = self._inputs(cuts)
        if self.input_transforms:
            segments = torch.stack(list(strategy.supervision_intervals(cuts).values()), dim=1)
            for transform in self.input_transforms:
                inputs = transform(inputs, supervision_segments=segments)
        return SpeechBatch(
            inputs=inputs,
            input_lens=torch.as_tensor(lens, dtype=torch.long),
            texts=texts,
            cut_ids=[c.id for c in cuts],
            durations=[float(c.duration) for c in cuts],
            input_kind=self.input_kind,
            cuts=list(cuts) if self.keep_cuts else [],
        )

    def _inputs(self, cuts: CutSet):
        if self.input_kind == "waveform":
            waves = [load_mono(c) for c in _at_rate(cuts, SAMPLE_RATE)]
            lens = torch.tensor([w.numel() for w in waves], dtype=torch.long)
            audio = torch.zeros(len(waves), int(lens.max()))
            for i, wave in enumerate(waves):
                audio[i, : wave.numel()] = wave
            return audio, lens, self._audio
        if self.on_the_fly_feats or not all(c.has_features for c in cuts):
            if not self.on_the_fly_feats:
                logging.debug("cuts without stored features: computing fbank on the fly")
            mats = [torch.from_numpy(self._extractor.extract(load_mono(c).numpy(), SAMPLE_RATE))
                    for c in _at_rate(cuts, SAMPLE_RATE)]
            lens = torch.tensor([m.shape[0] for m in mats], dtype=torch.long)
            return collate_matrices(mats, padding_value=LOG_EPSILON), lens, self._on_the_fly
        feats, lens = self._precomputed(cuts)
        return feats, lens, self._precomputed


def collate_for_model(cuts: List, input_kind: str, require_text: bool = False) -> SpeechBatch:
    """One batch from a list of cuts, no sampler (tests, transcribing a few files)."""
    return SpeechDataset(input_kind, require_text=require_text)[CutSet.from_cuts(cuts)]

