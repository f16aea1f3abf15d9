#!/usr/bin/env python3
"""Stage: synthetic room impulse responses for reverberation (``--rir-recordings``).

    python3 local/make_rirs.py --out-dir data/rirs --num 200 --seed 42

Writes ``<out-dir>/rir_<i>.wav`` (float32 mono, see
``speechadapt.data.augment.synthetic_rir``: direct path, early reflections, a tail
decaying 60 dB in an RT60 drawn from ``--rt60``) and the lhotse RecordingSet
``<out-dir>/rirs_recordings.jsonl.gz`` that the training flag ``--rir-recordings``
takes. RIR i depends on (seed, i) only. Each file is written under a temp name and
renamed, the manifest last, so an interrupted run never leaves a manifest naming a
missing or half-written file; RIR files of an earlier, larger run are removed.
"""

import argparse
import gzip
import json
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from speechadapt.data.augment import stable_seed, synthetic_rir
from speechadapt.data.prep_utils import setup_stage_logging
from speechadapt.utils.io import atomic_write_bytes

MANIFEST_NAME = "rirs_recordings.jsonl.gz"


def float_range(value: str):
    """'low,high' or one value -> a (low, high) tuple."""
    parts = [float(v) for v in str(value).split(",") if v.strip()]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or parts[0] > parts[1] or parts[0] <= 0:
        raise argparse.ArgumentTypeError(f"expected 'low,high' (0 < low <= high) or one value > 0, got {value!r}")
    return tuple(parts)


def write_wav_atomically(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    sf.write(tmp, samples, sample_rate, format="WAV", subtype="FLOAT")
    os.replace(tmp, path)


def make_rirs(out_dir, num: int, seed: int, sample_rate: int = 16000, rt60=(0.2, 0.8),
              max_seconds: float = 1.0) -> Path:
    """The RIR files and their RecordingSet manifest; returns the manifest path."""
    from lhotse import Recording

    if num < 1:
        raise ValueError(f"--num must be >= 1, got {num}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines, names = [], set()
    for i in range(num):
        rng = np.random.default_rng(stable_seed("rir", seed, i))
        rir = synthetic_rir(rng, sample_rate=sample_rate, rt60=rt60, max_seconds=max_seconds)
        path = out_dir / f"rir_{i:05d}.wav"
        write_wav_atomically(path, rir, sample_rate)
        names.add(path.name)
        recording = Recording.from_file(path, recording_id=f"rir-{i:05d}")
        lines.append(json.dumps(recording.to_dict()) + "\n")
    manifest = atomic_write_bytes(gzip.compress("".join(lines).encode("utf-8")), out_dir / MANIFEST_NAME)
    for stale in out_dir.glob("rir_*.wav"):
        if stale.name not in names:
            stale.unlink()
    return manifest


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--num", type=int, default=200, help="how many RIRs")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--sample-rate", type=int, default=16000, help="of the RIRs; the training audio's rate")
    p.add_argument("--rt60", type=float_range, default=(0.2, 0.8),
                   help="reverberation time in seconds: 'low,high' (uniform) or one value")
    p.add_argument("--max-seconds", type=float, default=1.0, help="longest RIR (a longer tail is cut)")
    return p


def main(argv=None) -> None:
    setup_stage_logging()
    args = get_parser().parse_args(argv)
    try:
        manifest = make_rirs(args.out_dir, args.num, args.seed, args.sample_rate, args.rt60, args.max_seconds)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{args.num} RIRs -> {manifest}")


if __name__ == "__main__":
    main()
