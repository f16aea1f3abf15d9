"""The ASR datamodule: lhotse cuts -> batches of fbank features, icefall flag names.

Usage (as icefall's ``AsrDataModule``)::

    AsrDataModule.add_arguments(parser)
    dm = AsrDataModule(args)
    train_dl = dm.train_dataloaders(dm.load_cuts("source_train"), sampler_state_dict=...)
    for batch in train_dl:  # batch["inputs"] (N, T, 80); batch["supervisions"] as lhotse's
        ...

Distributed: the sampler is a lhotse ``DynamicBucketingSampler`` (or ``SimpleCutSampler``)
told the rank and world size, so every rank gets the same number of batches. With
``--drop-last false`` the last round is shared out and, when there are fewer cuts
left than ranks, padded with copies whose ids end in ``_dup<N>``:
:func:`is_padding_duplicate` recognises them so scoring can drop them.

Randomness and exact resume:
- the sampler is ``dataloader.sampler``; its ``state_dict()``/``load_state_dict()`` resume
  mid-epoch, its order is fixed by ``--seed`` and ``sampler.set_epoch(epoch)``;
- DataLoader workers are seeded from (seed, rank, epoch, worker id) (python ``random``,
  numpy and torch global RNGs; lhotse's CutMix reads the same per-worker seed);
- with ``--num-workers 0`` the transforms run in the main process: SpecAugment draws
  from the *global* python ``random``, numpy and torch RNGs, and CutMix from its own
  ``random.Random(seed + rank)``, so the training loop must save/restore the global
  RNG states for a bit-exact resume.
"""

import argparse
import logging
import os
import random
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from lhotse import CutSet, load_manifest_lazy
from lhotse.dataset import (
    CutMix,
    DynamicBucketingSampler,
    K2SpeechRecognitionDataset,
    SimpleCutSampler,
    SpecAugment,
)
from lhotse.dataset.dataloading import LHOTSE_PROCESS_SEED
from lhotse.dataset.input_strategies import OnTheFlyFeatures, PrecomputedFeatures
from lhotse import Fbank, FbankConfig
from torch.utils.data import DataLoader

from speechadapt.data.features import fbank_cuts_path
from speechadapt.data.manifests import PREFIX
from speechadapt.utils.args import str2bool

logger = logging.getLogger(__name__)

_DUP_SUFFIX = re.compile(r"_dup\d+$")


def is_padding_duplicate(cut_id: str) -> bool:
    """True for the copies lhotse's sampler adds to even out the last DDP round."""
    return bool(_DUP_SUFFIX.search(cut_id))


def _snr_range(value: str):
    """'10,20' -> (10.0, 20.0); '15' -> 15.0."""
    parts = [float(v) for v in str(value).split(",") if v.strip()]
    if len(parts) == 1:
        return parts[0]
    if len(parts) != 2 or parts[0] > parts[1]:
        raise argparse.ArgumentTypeError(f"expected an SNR 'low,high' or one value, got {value!r}")
    return tuple(parts)


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
    """Dataloaders for training, validation and test over fbank cuts."""

    def __init__(self, args: argparse.Namespace):
        self.args = args

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("ASR data related options")
        group.add_argument("--manifest-dir", type=Path, default=Path("data/fbank"),
                           help="Directory with the synth_cuts_<split>.jsonl.gz fbank cuts.")
        group.add_argument("--max-duration", type=float, default=200.0,
                           help="Maximum pooled seconds of audio in a batch.")
        group.add_argument("--bucketing-sampler", type=str2bool, default=True,
                           help="DynamicBucketingSampler (similar lengths together) or SimpleCutSampler.")
        group.add_argument("--num-buckets", type=int, default=30)
        group.add_argument("--shuffle", type=str2bool, default=True)
        group.add_argument("--drop-last", type=str2bool, default=True,
                           help="Drop the last incomplete round; false pads it with _dup copies.")
        group.add_argument("--return-cuts", type=str2bool, default=True)
        group.add_argument("--num-workers", type=int, default=2)
        group.add_argument("--on-the-fly-feats", type=str2bool, default=False,
                           help="Compute fbank from audio in the loader instead of reading it.")
        group.add_argument("--enable-spec-aug", type=str2bool, default=True)
        group.add_argument("--spec-aug-time-warp-factor", type=int, default=80,
                           help="<1 disables time warping.")
        group.add_argument("--enable-noise-mix", "--enable-musan", dest="enable_noise_mix",
                           type=str2bool, default=False,
                           help="Mix noise cuts into training cuts on the fly.")
        group.add_argument("--noise-cuts", type=Path, default=None,
                           help="Noise cuts (default: <manifest-dir>/synth_cuts_noise.jsonl.gz).")
        group.add_argument("--noise-mix-prob", type=float, default=0.5)
        group.add_argument("--noise-snr", type=_snr_range, default=(10.0, 20.0),
                           help="SNR in dB: 'low,high' (uniform) or one value.")
        if "--seed" not in parser._option_string_actions:  # the training script may own it
            group.add_argument("--seed", type=int, default=42)

    # ---- cuts ----------------------------------------------------------------------

    def load_cuts(self, split: str, prefix: str = PREFIX) -> CutSet:
        """Lazily open ``<manifest-dir>/{prefix}_cuts_{split}.jsonl.gz``."""
        path = fbank_cuts_path(self.args.manifest_dir, split, prefix)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: run prepare.sh (fbank stages) first")
        return load_manifest_lazy(path)

    # ---- loaders -------------------------------------------------------------------

    def train_dataloaders(self, cuts: CutSet, sampler_state_dict: Optional[Dict[str, Any]] = None,
                          world_size: Optional[int] = None, rank: Optional[int] = None) -> DataLoader:
        world_size, rank = _dist_info(world_size, rank)
        dataset = K2SpeechRecognitionDataset(
            return_cuts=self.args.return_cuts,
            cut_transforms=self._cut_transforms(rank),
            input_transforms=self._input_transforms(),
            input_strategy=self._input_strategy(),
        )
        sampler = self._sampler(cuts, shuffle=self.args.shuffle, drop_last=self.args.drop_last,
                                world_size=world_size, rank=rank)
        if sampler_state_dict is not None:
            logger.info("restoring the sampler state")
            sampler.load_state_dict(sampler_state_dict)
        return self._loader(dataset, sampler, rank)

    def valid_dataloaders(self, cuts: CutSet, world_size: Optional[int] = None,
                          rank: Optional[int] = None) -> DataLoader:
        world_size, rank = _dist_info(world_size, rank)
        return self._eval_loader(cuts, world_size, rank)

    def test_dataloaders(self, cuts: CutSet, world_size: int = 1, rank: int = 0) -> DataLoader:
        """Decoding loader; every cut exactly once when world_size is 1 (the default)."""
        return self._eval_loader(cuts, world_size, rank)

    # ---- pieces --------------------------------------------------------------------

    def _eval_loader(self, cuts: CutSet, world_size: int, rank: int) -> DataLoader:
        dataset = K2SpeechRecognitionDataset(return_cuts=self.args.return_cuts,
                                             input_strategy=self._input_strategy())
        sampler = self._sampler(cuts, shuffle=False, drop_last=False,
                                world_size=world_size, rank=rank)
        return self._loader(dataset, sampler, rank)

    def _sampler(self, cuts: CutSet, shuffle: bool, drop_last: bool, world_size: int, rank: int):
        common = dict(max_duration=self.args.max_duration, shuffle=shuffle, drop_last=drop_last,
                      world_size=world_size, rank=rank, seed=self.args.seed)
        if self.args.bucketing_sampler:
            return DynamicBucketingSampler(cuts, num_buckets=self.args.num_buckets, **common)
        return SimpleCutSampler(cuts, **common)

    def _loader(self, dataset, sampler, rank: int) -> DataLoader:
        workers = self.args.num_workers
        return DataLoader(
            dataset, sampler=sampler, batch_size=None, num_workers=workers,
            persistent_workers=False,
            worker_init_fn=SeedWorkers(self.args.seed, rank, sampler) if workers > 0 else None,
        )

    def _input_strategy(self):
        if self.args.on_the_fly_feats:
            return OnTheFlyFeatures(Fbank(FbankConfig(num_mel_bins=80)))
        return PrecomputedFeatures()

    def _input_transforms(self) -> List:
        if not self.args.enable_spec_aug:
            return []
        # icefall's settings for 80-dim fbank
        return [SpecAugment(time_warp_factor=self.args.spec_aug_time_warp_factor,
                            num_frame_masks=10, features_mask_size=27, num_feature_masks=2,
                            frames_mask_size=100)]

    def _cut_transforms(self, rank: int) -> List:
        if not self.args.enable_noise_mix:
            return []
        path = self.args.noise_cuts or fbank_cuts_path(self.args.manifest_dir, "noise")
        if not Path(path).is_file():
            raise FileNotFoundError(f"noise mixing is on but {path} does not exist "
                                    "(run prepare.sh, or pass --noise-cuts)")
        seed = "randomized" if self.args.num_workers > 0 else self.args.seed + rank
        return [CutMix(cuts=load_manifest_lazy(path).to_eager(), p=self.args.noise_mix_prob,
                       snr=self.args.noise_snr, preserve_id=True, seed=seed)]


def _dist_info(world_size: Optional[int], rank: Optional[int]):
    """Explicit values win; else torch.distributed when initialised; else single process."""
    if world_size is None or rank is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return (world_size if world_size is not None else torch.distributed.get_world_size(),
                    rank if rank is not None else torch.distributed.get_rank())
        return (world_size or 1, rank or 0)
    return world_size, rank
