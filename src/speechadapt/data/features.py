"""80-dim fbank with lhotse's ``Fbank``, stored by ``LilcomChunkyWriter``.

Layout (icefall): ``<fbank_dir>/<prefix>_cuts_<split>.jsonl.gz`` next to the feature
archive ``<fbank_dir>/<prefix>_feats_<split>.lca`` (the prefix names the corpus). Speed perturbation (0.9/1.1) of the
training cuts is done here, before feature extraction, as icefall does; the
perturbed copies get lhotse's ``_sp0.9``/``_sp1.1`` id suffixes.
"""

import logging
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

from lhotse import CutSet, Fbank, FbankConfig, LilcomChunkyWriter
from lhotse.utils import compute_num_frames

from speechadapt.utils.workers import process_context


logger = logging.getLogger(__name__)

FRAME_SHIFT = 0.01
NUM_MEL_BINS = 80
# Below this many cuts one in-process job beats starting worker processes (each one
# imports torch and lhotse, ~10 s on a busy machine).
MIN_CUTS_PER_EXTRA_JOB = 500


def fbank_cuts_path(fbank_dir, split: str, prefix: str) -> Path:
    return Path(fbank_dir) / f"{prefix}_cuts_{split}.jsonl.gz"


def fbank_storage_path(fbank_dir, split: str, prefix: str) -> Path:
    return Path(fbank_dir) / f"{prefix}_feats_{split}"


def add_speed_perturbation(cuts: CutSet, factors: Sequence[float] = (0.9, 1.1)) -> CutSet:
    """The original cuts plus one resampled copy per factor (ids suffixed ``_sp<factor>``)."""
    out = cuts
    for factor in factors:
        out = out + cuts.perturb_speed(factor)
    return out.to_eager()


def compute_fbank(cuts: CutSet, storage_path, num_jobs: int = 1,
                  num_mel_bins: int = NUM_MEL_BINS) -> CutSet:
    """Extract and store fbank features; returns the cuts with features attached."""
    storage_path = Path(storage_path)
    for stale in (storage_path, storage_path.with_suffix(".lca")):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    storage_path.parent.mkdir(parents=True, exist_ok=True)
    extractor = Fbank(FbankConfig(num_mel_bins=num_mel_bins))
    num_jobs = max(1, min(num_jobs, len(cuts) // MIN_CUTS_PER_EXTRA_JOB))
    common = dict(extractor=extractor, storage_path=str(storage_path), num_jobs=num_jobs,
                  storage_type=LilcomChunkyWriter)
    if num_jobs == 1:
        return cuts.compute_and_store_features(**common).to_eager()
    # lhotse's own pool spawns workers that each start several torch threads; on a
    # shared 2-core machine that ran 7000 cuts in 832 s against 35 s in-process.
    # Single-threaded workers from a fork server (utils.workers) avoid both, and are never
    # forked from this process, whose torch or caller threads could leave a lock held.
    with ProcessPoolExecutor(num_jobs, mp_context=process_context("forkserver", ["lhotse", "torch"]),
                             initializer=_single_threaded) as pool:
        return cuts.compute_and_store_features(executor=pool, **common).to_eager()


def _single_threaded() -> None:
    import torch

    torch.set_num_threads(1)


def check_frame_counts(cuts: CutSet, num_mel_bins: int = NUM_MEL_BINS) -> None:
    """Every stored feature matrix has the frames its cut's duration implies (10 ms
    shift) and ``num_mel_bins`` bins (``cut.num_frames`` is derived from the duration,
    so the stored ``cut.features`` header is what is checked)."""
    for cut in cuts:
        expected = compute_num_frames(cut.duration, FRAME_SHIFT, cut.sampling_rate)
        stored = cut.features
        if stored is None or stored.num_frames != expected or stored.num_features != num_mel_bins:
            found = "no features" if stored is None else f"{stored.num_frames}x{stored.num_features}"
            raise ValueError(f"cut {cut.id}: features {found}, expected {expected}x{num_mel_bins} "
                             f"for {cut.duration:.3f} s")


def check_all_featurised(wanted, cuts: CutSet, split: str) -> None:
    """lhotse skips a cut whose audio fails to load (with a warning only): count in and
    out, and name what went missing, before anything is written."""
    got = {c.id for c in cuts}
    missing = [i for i in wanted if i not in got]
    if missing:
        shown = ", ".join(missing[:10]) + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else "")
        raise ValueError(f"{split}: {len(missing)} of {len(wanted)} cuts produced no features (unreadable "
                         f"or corrupt audio?): {shown}")


def featurise_split(cuts: CutSet, fbank_dir, split: str, prefix: str, num_jobs: int = 1,
                    speed_perturb: bool = False, store: bool = True) -> CutSet:
    """Fbank of one split (optionally speed-perturbed), checked and written; returns the cuts.
    ``store=False``: the cuts only, for fbank computed on the fly while training."""
    if speed_perturb:
        cuts = add_speed_perturbation(cuts)
    if not store:
        out = fbank_cuts_path(fbank_dir, split, prefix)
        out.parent.mkdir(parents=True, exist_ok=True)
        cuts.to_file(out)
        return cuts
    wanted = [c.id for c in cuts]
    cuts = compute_fbank(cuts, fbank_storage_path(fbank_dir, split, prefix), num_jobs)
    check_all_featurised(wanted, cuts, split)
    check_frame_counts(cuts)
    out = fbank_cuts_path(fbank_dir, split, prefix)
    cuts.to_file(out)
    logger.info("%s: %d cuts, %.2f h -> %s", split, len(cuts),
                sum(c.duration for c in cuts) / 3600, out)
    return cuts
