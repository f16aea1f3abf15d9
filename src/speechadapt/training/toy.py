"""A tiny, complete training entry point: the loop's reference user and test bed.

Frame-level classification of synthetic "utterances" (lhotse dummy cuts whose
features are drawn from a per-cut seed with a label-dependent mean), batched by a
lhotse DynamicBucketingSampler, optional lhotse SpecAugment in the training path.
Run it as any stage: ``python -m speechadapt.training.toy --exp-dir D --num-epochs 2``
(``--world-size 2`` spawns; under ``torchrun`` it joins the launched group), with any
optimiser of the registry (``--optimizer mezo``).
"""

import argparse
import logging
import time
import warnings
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from speechadapt.training.dist import cleanup_dist, launch, setup_dist
from speechadapt.training.loop import Trainer
from speechadapt.training.metrics import MetricsTracker
from speechadapt.training.optim import OptimizerConfig
from speechadapt.training.options import TrainingConfig
from speechadapt.training.schedulers import SchedulerConfig
from speechadapt.utils.args import str2bool
from speechadapt.utils.flags import add_dataclass_arguments, dataclass_from_args, parse_args
from speechadapt.utils.log import setup_logger

NUM_FEATURES = 8
NUM_CLASSES = 4


class ToyModel(nn.Module):
    """Per-frame classifier, no dropout (so DDP can be compared to one process).

    ``compute_loss(batch)`` (the loop's interface): per-frame cross-entropy summed over
    a batch of :func:`collate_cuts`, with SpecAugment in training mode when given.
    """

    def __init__(self, num_features: int = NUM_FEATURES, hidden: int = 16, num_classes: int = NUM_CLASSES,
                 spec_augment=None):
        super().__init__()
        self.encoder = nn.Linear(num_features, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.output = nn.Linear(hidden, num_classes)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.batch_count = 0
        self.spec_augment = spec_augment

    def set_batch_count(self, count: int) -> None:
        self.batch_count = count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.norm(torch.tanh(self.encoder(x))))

    def compute_loss(self, batch: Dict) -> Tuple[torch.Tensor, MetricsTracker]:
        device = next(self.parameters()).device
        x = batch["features"].to(device)
        lens = batch["features_lens"].to(device)
        if self.training and self.spec_augment is not None:
            x = self.spec_augment(x)
        logits = self(x)
        mask = torch.arange(x.size(1), device=device)[None, :] < lens[:, None]
        targets = batch["labels"].to(device)[:, None].expand(-1, x.size(1))
        loss = F.cross_entropy(logits[mask], targets[mask], reduction="sum")
        info = MetricsTracker(unnormalised=["utterances"])
        info["frames"] = float(mask.sum())
        info["utterances"] = float(x.size(0))
        info["loss"] = float(loss.detach())
        return loss, info


def cut_label(cut_id: str) -> int:
    return int(cut_id.rsplit("-", 1)[-1]) % NUM_CLASSES


def cut_features(cut_id: str, num_frames: int) -> torch.Tensor:
    """Deterministic features for a cut, independent of every global RNG."""
    index = int(cut_id.rsplit("-", 1)[-1])
    generator = torch.Generator().manual_seed(1000 + index)
    feats = torch.randn(num_frames, NUM_FEATURES, generator=generator)
    feats[:, cut_label(cut_id)] += 1.5
    return feats


def make_toy_cuts(num_cuts: int = 24):
    """An in-memory lhotse CutSet of dummy cuts of 0.3-0.65 s."""
    from lhotse import CutSet
    from lhotse.testing.dummies import dummy_cut

    return CutSet.from_cuts(dummy_cut(i, duration=0.3 + 0.05 * (i % 8)) for i in range(num_cuts))


def collate_cuts(cuts) -> Dict[str, torch.Tensor]:
    """Pad a list/CutSet of cuts into features (B,T,F), lengths and labels."""
    cuts = list(cuts)
    feats = [cut_features(c.id, max(1, round(c.duration * 100))) for c in cuts]
    lens = torch.tensor([f.size(0) for f in feats])
    padded = torch.zeros(len(feats), int(lens.max()), NUM_FEATURES)
    for i, f in enumerate(feats):
        padded[i, : f.size(0)] = f
    labels = torch.tensor([cut_label(c.id) for c in cuts])
    return {"features": padded, "features_lens": lens, "labels": labels}


def concat_batches(batches: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """One batch holding every utterance of ``batches`` (re-padded)."""
    utts = []
    for b in batches:
        for i in range(b["labels"].numel()):
            utts.append((b["features"][i, : b["features_lens"][i]], b["labels"][i]))
    lens = torch.tensor([u[0].size(0) for u in utts])
    padded = torch.zeros(len(utts), int(lens.max()), NUM_FEATURES)
    for i, (f, _) in enumerate(utts):
        padded[i, : f.size(0)] = f
    return {"features": padded, "features_lens": lens, "labels": torch.stack([u[1] for u in utts])}


class ToyCutDataset(torch.utils.data.Dataset):
    """lhotse-style dataset: indexed by a CutSet mini-batch, returns a padded batch."""

    def __getitem__(self, cuts) -> Dict[str, torch.Tensor]:
        return collate_cuts(cuts)


def make_toy_dataloader(cuts, max_duration: float, shuffle: bool = True, seed: int = 0,
                        world_size: Optional[int] = None, rank: Optional[int] = None):
    from lhotse.dataset import DynamicBucketingSampler

    with warnings.catch_warnings():  # the toy CutSet is eager on purpose
        warnings.filterwarnings("ignore", message=".*eagerly read CutSet.*")
        sampler = DynamicBucketingSampler(cuts, max_duration=max_duration, shuffle=shuffle, num_buckets=2,
                                          seed=seed, world_size=world_size, rank=rank, buffer_size=1000)
    return torch.utils.data.DataLoader(ToyCutDataset(), sampler=sampler, batch_size=None, num_workers=0)


def make_spec_augment():
    from lhotse.dataset import SpecAugment

    return SpecAugment(time_warp_factor=5, num_feature_masks=1, features_mask_size=2,
                       num_frame_masks=1, frames_mask_size=5, p=0.9)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, TrainingConfig, "training")
    add_dataclass_arguments(parser, OptimizerConfig, "optimizer")
    add_dataclass_arguments(parser, SchedulerConfig, "learning-rate schedule")
    parser.add_argument("--num-cuts", type=int, default=24)
    parser.add_argument("--max-duration", type=float, default=2.0, help="seconds per batch")
    parser.add_argument("--spec-augment", type=str2bool, default=True)
    parser.add_argument("--seconds-per-batch", type=float, default=0.0,
                        help="sleep before each batch: a run slow enough to be signalled mid-way (tests)")
    return parser


def run(rank: int, world_size: int, args: argparse.Namespace) -> None:
    dist_info = setup_dist(rank, world_size)
    setup_logger(args.exp_dir, "train", dist_info.rank, dist_info.world_size)
    config = dataclass_from_args(TrainingConfig, args)
    cuts = make_toy_cuts(args.num_cuts)
    train_dl = make_toy_dataloader(cuts, args.max_duration, seed=config.seed)
    valid_dl = make_toy_dataloader(make_toy_cuts(8), args.max_duration, shuffle=False)
    torch.manual_seed(config.seed)  # same initial model on every rank
    model = ToyModel(spec_augment=make_spec_augment() if args.spec_augment else None)
    hooks = [lambda trainer: time.sleep(args.seconds_per_batch)] if args.seconds_per_batch > 0 else []
    trainer = Trainer(config, model, train_dl, valid_dl, dist_info,
                      optimizer_config=dataclass_from_args(OptimizerConfig, args),
                      scheduler_config=dataclass_from_args(SchedulerConfig, args), batch_hooks=hooks)
    params = trainer.fit()
    logging.info(f"done: best valid loss {params['best_valid_loss']:.4f}")
    cleanup_dist()


def main(argv=None) -> None:
    args = parse_args(get_parser(), argv, entry_point="toy")
    launch(run, args.world_size, args)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
