"""The ASR datamodule: lhotse cuts -> batches, icefall's flag names, no corpus names.

Usage (as icefall's ``AsrDataModule``)::

    add_dataclass_arguments(parser, DataConfig)          # --manifest-dir --cuts-prefix ...
    dm = AsrDataModule(dataclass_from_args(DataConfig, args), input_kind=model.input_kind, seed=42)
    train_dl = dm.train_dataloaders(dm.load_cuts("train-clean-100"), sampler_state_dict=...)
    for batch in train_dl:  # a SpeechBatch: fbank (B, T, 80) or 16 kHz waveform (B, S)
        ...

Cut manifests are named by flag: ``load_cuts(NAME)`` opens
``<manifest-dir>/<cuts-prefix>_cuts_<NAME>.jsonl.gz`` (icefall's naming), and a NAME
that is a path (``.jsonl``/``.jsonl.gz``) is opened as it is. The input kind (fbank or
waveform) comes from the model, so the same cuts feed every model.

Distributed: the sampler is a lhotse ``DynamicBucketingSampler`` (or ``SimpleCutSampler``)
told the rank and world size, so every rank gets the same number of batches. With
``--drop-last false`` the last round is shared out and, when there are fewer cuts
left than ranks, padded with copies whose ids end in ``_dup<N>``:
:func:`is_padding_duplicate` recognises them so scoring can drop them.

Augmentation (training only, all off by default): speed perturbation, tempo change,
reverberation with given RIRs and noise mixing (``speechadapt.data.augment``), applied
per cut as a lhotse sampler ``map``; SpecAugment on the fbank in the dataset. Speed,
tempo and reverberation change the audio: fbank models need ``--on-the-fly-feats true``.

Randomness and exact resume:
- the sampler is ``dataloader.sampler``; its ``state_dict()``/``load_state_dict()`` resume
  mid-epoch, its order is fixed by the seed and ``sampler.set_epoch(epoch)``;
- every choice of the cut augmentations (applied or not, factor, RIR, noise cut, offset,
  SNR) is a function of (seed, epoch, cut id): the augmenter runs where the sampler
  runs, reads ``sampler.epoch`` and seeds one generator per cut from a stable hash, so
  a resumed epoch gets the same audio with any number of workers;
- DataLoader workers are seeded from (seed, rank, epoch, worker id) (python ``random``,
  numpy and torch global RNGs);
- SpecAugment draws from the *global* python ``random``, numpy and torch RNGs: with
  ``--num-workers 0`` the training loop saves/restores them for a bit-exact resume;
  with workers its draws depend on how many batches a worker made since it started.
"""

import itertools
import logging
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler, SpecAugment
from lhotse.dataset.dataloading import LHOTSE_PROCESS_SEED
from torch.utils.data import DataLoader

from speechadapt.data.augment import CutAugmenter, augmenter_summary, load_rirs
from speechadapt.data.dataset import SpeechDataset
from speechadapt.data.manifests import open_manifest

logger = logging.getLogger(__name__)

_DUP_SUFFIX = re.compile(r"_dup\d+$")
MANIFEST_SUFFIXES = (".jsonl.gz", ".jsonl")


def is_padding_duplicate(cut_id: str) -> bool:
    """True for the copies lhotse's sampler adds to even out the last DDP round."""
    return bool(_DUP_SUFFIX.search(cut_id))


def cuts_file(manifest_dir, prefix: Optional[str], name: str) -> Path:
    """The cuts manifest a NAME stands for (see the module docstring)."""
    if str(name).endswith(MANIFEST_SUFFIXES):
        return Path(name)
    if not prefix:
        raise ValueError(f"cuts '{name}': give --cuts-prefix (the corpus part of the manifest names, "
                         f"as in <prefix>_cuts_{name}.jsonl.gz) or a path to a cuts .jsonl.gz file")
    return Path(manifest_dir) / f"{prefix}_cuts_{name}.jsonl.gz"


def split_name(name: str) -> str:
    """What results call a set of cuts: the split name, also when given as a path
    (``data/fbank/synth_cuts_source_test.jsonl.gz`` -> ``source_test``)."""
    if not str(name).endswith(MANIFEST_SUFFIXES):
        return str(name)
    stem = Path(name).name
    for suffix in MANIFEST_SUFFIXES:
        stem = stem.removesuffix(suffix)
    return stem.split("_cuts_", 1)[1] if "_cuts_" in stem else stem


@dataclass
class DataConfig:
    manifest_dir: str = field(default="data/fbank", metadata={"help": "directory of the cut manifests"})
    cuts_prefix: Optional[str] = field(default=None, metadata={
        "help": "corpus part of the manifest names: <manifest-dir>/<prefix>_cuts_<split>.jsonl.gz"})
    max_duration: float = field(default=200.0, metadata={"help": "seconds of audio per batch"})
    bucketing_sampler: bool = field(default=True, metadata={
        "help": "DynamicBucketingSampler (similar lengths together) or SimpleCutSampler"})
    num_buckets: int = 30
    shuffle: bool = True
    drop_last: bool = field(default=True, metadata={
        "help": "drop the last incomplete round in training; false pads it with _dup copies"})
    num_workers: int = 2
    on_the_fly_feats: bool = field(default=False, metadata={
        "help": "compute fbank from the audio in the loader instead of reading stored features"})
    enable_spec_aug: bool = field(default=True, metadata={"help": "SpecAugment in training (fbank only)"})
    spec_aug_time_warp_factor: int = field(default=80, metadata={"help": "< 1 disables time warping"})
    enable_noise_mix: bool = field(default=False, metadata={
        "help": "mix noise cuts into training cuts on the fly", "aliases": ["--enable-musan"]})
    noise_cuts: str = field(default="", metadata={"help": "noise cuts: a split name or a path"})
    noise_mix_prob: float = 0.5
    noise_snr: Tuple[float, ...] = field(default=(10.0, 20.0), metadata={
        "help": "SNR in dB: 'low,high' (uniform) or one value"})
    speed_perturb_factors: Tuple[float, ...] = field(default=(), metadata={
        "help": "on-the-fly speed perturbation (lhotse perturb_speed: tempo and pitch together), e.g. 0.9,1.1: "
                "a perturbed cut gets one factor at random; empty: off. Changes the audio: fbank models need "
                "--on-the-fly-feats true"})
    speed_perturb_prob: float = field(default=0.5, metadata={
        "help": "probability that a training cut is speed-perturbed (with --speed-perturb-factors)"})
    tempo_factors: Tuple[float, ...] = field(default=(), metadata={
        "help": "on-the-fly tempo change, pitch kept (WSOLA), factors in [0.5, 2], e.g. 0.9,1.1 (> 1: faster); "
                "empty: off. Fbank models need --on-the-fly-feats true"})
    tempo_prob: float = field(default=0.5, metadata={
        "help": "probability that a training cut gets a tempo change (with --tempo-factors)"})
    rir_recordings: str = field(default="", metadata={
        "help": "room impulse responses for reverberation: a lhotse RecordingSet manifest (local/make_rirs.py "
                "writes synthetic ones); empty: off. Fbank models need --on-the-fly-feats true"})
    reverb_prob: float = field(default=0.5, metadata={
        "help": "probability that a training cut is reverberated with a random RIR (with --rir-recordings)"})
    max_bad_transcripts: float = field(default=0.01, metadata={
        "help": "training cuts with an empty transcript or characters the model cannot spell: up to this "
                "fraction a warning (empty ones left out), above it an error"})

    def validate(self) -> None:
        if self.max_duration <= 0:
            raise ValueError(f"--max-duration must be > 0, got {self.max_duration}")
        if self.bucketing_sampler and self.num_buckets < 2:
            raise ValueError(f"--num-buckets must be >= 2 with the bucketing sampler, got {self.num_buckets} "
                             f"(or pass --bucketing-sampler false)")
        if len(self.noise_snr) not in (1, 2) or (len(self.noise_snr) == 2 and self.noise_snr[0] > self.noise_snr[1]):
            raise ValueError(f"--noise-snr takes 'low,high' or one value, got {self.noise_snr}")
        if not 0.0 <= self.max_bad_transcripts <= 1.0:
            raise ValueError(f"--max-bad-transcripts is a fraction in [0, 1], got {self.max_bad_transcripts}")
        if self.enable_noise_mix and not self.noise_cuts:
            raise ValueError("--enable-noise-mix true needs --noise-cuts (a split name or a path)")
        for flag, prob in (("--noise-mix-prob", self.noise_mix_prob), ("--speed-perturb-prob", self.speed_perturb_prob),
                           ("--tempo-prob", self.tempo_prob), ("--reverb-prob", self.reverb_prob)):
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"{flag} is a probability in [0, 1], got {prob}")
        if any(not f > 0 for f in self.speed_perturb_factors):
            raise ValueError(f"--speed-perturb-factors must be > 0, got {self.speed_perturb_factors}")
        if any(not 0.5 <= f <= 2.0 for f in self.tempo_factors):
            raise ValueError(f"--tempo-factors must lie in [0.5, 2], got {self.tempo_factors}")

    def audio_augmentation_flags(self) -> List[str]:
        """The flags that are on and change the audio itself (not just mix into it)."""
        on = [("--speed-perturb-factors", bool(self.speed_perturb_factors) and self.speed_perturb_prob > 0),
              ("--tempo-factors", bool(self.tempo_factors) and self.tempo_prob > 0),
              ("--rir-recordings", bool(self.rir_recordings) and self.reverb_prob > 0)]
        return [flag for flag, is_on in on if is_on]

    def input_augmentation_flags(self) -> List[str]:
        """Every flag that is on and makes one cut's training input differ between draws."""
        return self.audio_augmentation_flags() + [flag for flag, is_on in (
            ("--enable-spec-aug", self.enable_spec_aug), ("--enable-noise-mix", self.enable_noise_mix)) if is_on]


class SeedWorkers:
    """``worker_init_fn``: seeds each DataLoader worker from (seed, rank, epoch, worker)."""

    def __init__(self, seed: int, rank: int, sampler):
        self.seed, self.rank, self.sampler = seed, rank, sampler

    def __call__(self, worker_id: int) -> None:
        epoch = getattr(self.sampler, "epoch", 0)
        process_seed = (self.seed + 100 * worker_id + 100_000 * self.rank + 7919 * epoch) % (2 ** 31)
        random.seed(process_seed)
        np.random.seed(process_seed)
        torch.manual_seed(process_seed)
        os.environ[LHOTSE_PROCESS_SEED] = str(process_seed)


class AsrDataModule:
    """Dataloaders for training, validation and test over cut manifests."""

    def __init__(self, config: DataConfig, input_kind: str = "fbank", seed: int = 0):
        config.validate()
        self.config = config
        self.input_kind = input_kind
        self.seed = seed

    # ---- cuts ----------------------------------------------------------------------

    def cuts_path(self, name: str) -> Path:
        return cuts_file(self.config.manifest_dir, self.config.cuts_prefix, name)

    def require(self, *names: str) -> None:
        """Fail, naming the file, unless the cuts of every (non-empty) name exist."""
        for name in filter(None, names):
            path = self.cuts_path(name)
            if not path.is_file():
                raise FileNotFoundError(f"cuts '{name}': {path} does not exist (run the recipe's prepare.sh, "
                                        f"or check --manifest-dir / --cuts-prefix)")

    def load_cuts(self, name: str) -> CutSet:
        """Lazily open the cuts a split name or a path stands for."""
        self.require(name)
        return open_manifest(self.cuts_path(name))

    # ---- loaders -------------------------------------------------------------------

    def train_dataloaders(self, cuts: CutSet, sampler_state_dict: Optional[Dict[str, Any]] = None,
                          world_size: Optional[int] = None, rank: Optional[int] = None) -> DataLoader:
        world_size, rank = _dist_info(world_size, rank)
        augmenter = self._augmenter()
        dataset = SpeechDataset(self.input_kind, self.config.on_the_fly_feats,
                                input_transforms=self._input_transforms())
        sampler = self._sampler(cuts, shuffle=self.config.shuffle, drop_last=self.config.drop_last,
                                world_size=world_size, rank=rank)
        if sampler_state_dict is not None:
            logger.info("restoring the sampler state")
            sampler.load_state_dict(sampler_state_dict)
        if augmenter is not None:
            # in the sampler's process, after the rank split, on every batch it yields
            sampler.map(augmenter.bind(sampler))
        logger.info(augmenter_summary(augmenter))
        return self._loader(dataset, sampler, rank)

    def check_augmentation(self) -> None:
        """Audio augmentation needs the audio: refuse it for fbank read from storage."""
        flags = self.config.audio_augmentation_flags()
        if flags and self.input_kind == "fbank" and not self.config.on_the_fly_feats:
            raise ValueError(f"{', '.join(flags)} change the audio, but stored fbank features are read: "
                             f"pass --on-the-fly-feats true to compute fbank from the augmented audio")

    def valid_dataloaders(self, cuts: CutSet, world_size: Optional[int] = None,
                          rank: Optional[int] = None) -> DataLoader:
        world_size, rank = _dist_info(world_size, rank)
        return self._eval_loader(cuts, world_size, rank)

    def test_dataloaders(self, cuts: CutSet, world_size: int = 1, rank: int = 0,
                         require_text: bool = True, sort_by_duration: bool = False) -> DataLoader:
        """Decoding loader; every cut exactly once when world_size is 1 (the default).
        ``require_text=False`` for audio without transcripts (transcribe).
        ``sort_by_duration``: batches of neighbours in a longest-first order (LLM-ASR's
        generate pads every utterance of a batch to the longest; an OOM shows first)."""
        return self._eval_loader(cuts, world_size, rank, require_text, sort_by_duration)

    # ---- pieces --------------------------------------------------------------------

    def _eval_loader(self, cuts: CutSet, world_size: int, rank: int, require_text: bool = True,
                     sort_by_duration: bool = False) -> DataLoader:
        dataset = SpeechDataset(self.input_kind, self.config.on_the_fly_feats, require_text=require_text)
        if sort_by_duration:
            sampler = SimpleCutSampler(cuts.to_eager().sort_by_duration(ascending=False),
                                       max_duration=self.config.max_duration, shuffle=False, drop_last=False,
                                       world_size=world_size, rank=rank, seed=self.seed)
        else:
            sampler = self._sampler(cuts, shuffle=False, drop_last=False, world_size=world_size, rank=rank)
        return self._loader(dataset, sampler, rank)

    def _sampler(self, cuts: CutSet, shuffle: bool, drop_last: bool, world_size: int, rank: int):
        common = dict(max_duration=self.config.max_duration, shuffle=shuffle, drop_last=drop_last,
                      world_size=world_size, rank=rank, seed=self.seed)
        if self.config.bucketing_sampler:
            # lhotse asserts when there are fewer cuts than buckets (small dev sets).
            buckets = sum(1 for _ in itertools.islice(cuts, self.config.num_buckets))
            if buckets < self.config.num_buckets:
                logger.info(f"{buckets} cuts: {buckets} buckets instead of --num-buckets {self.config.num_buckets}")
            if buckets >= 2:
                return DynamicBucketingSampler(cuts, num_buckets=buckets, **common)
        return SimpleCutSampler(cuts, **common)

    def _loader(self, dataset, sampler, rank: int) -> DataLoader:
        workers = self.config.num_workers
        return DataLoader(
            dataset, sampler=sampler, batch_size=None, num_workers=workers, persistent_workers=False,
            worker_init_fn=SeedWorkers(self.seed, rank, sampler) if workers > 0 else None,
        )

    def _input_transforms(self) -> List:
        if not self.config.enable_spec_aug or self.input_kind != "fbank":
            return []
        # icefall's settings for 80-dim fbank
        return [SpecAugment(time_warp_factor=self.config.spec_aug_time_warp_factor,
                            num_frame_masks=10, features_mask_size=27, num_feature_masks=2,
                            frames_mask_size=100)]

    def _augmenter(self) -> Optional[CutAugmenter]:
        """The cut augmentations the flags ask for, or None (the default: none)."""
        self.check_augmentation()
        c = self.config
        noise = []
        if c.enable_noise_mix:
            try:
                noise = list(self.load_cuts(c.noise_cuts))
            except FileNotFoundError as e:
                raise FileNotFoundError(f"noise mixing is on but --noise-cuts cannot be opened: {e}") from None
            if not noise:
                raise ValueError(f"--noise-cuts {c.noise_cuts} holds no cuts")
        rirs = load_rirs(c.rir_recordings) if c.rir_recordings and c.reverb_prob > 0 else []
        augmenter = CutAugmenter(self.seed, c.speed_perturb_factors, c.speed_perturb_prob, c.tempo_factors,
                                 c.tempo_prob, rirs, c.reverb_prob, noise, c.noise_mix_prob if noise else 0.0,
                                 c.noise_snr)
        return augmenter if augmenter.enabled else None


def _dist_info(world_size: Optional[int], rank: Optional[int]):
    """Explicit values win; else torch.distributed when initialised; else single process."""
    if world_size is None or rank is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return (world_size if world_size is not None else torch.distributed.get_world_size(),
                    rank if rank is not None else torch.distributed.get_rank())
        return (world_size or 1, rank or 0)
    return world_size, rank
