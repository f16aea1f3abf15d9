"""A test set with Gaussian noise added to the waveform once and stored (SUTA's noisy sets).

``x + std * N(0, 1)`` on the 16 kHz float waveform in [-1, 1], the noise of each utterance
drawn from a generator seeded by (seed, the cut id), so the stored set is the same on
every run and every method is scored on the same audio. Written as 24-bit FLAC (the
quantisation adds ~1e-7 RMS, far below std 0.005); samples beyond +-1 are clipped and counted.
"""

import logging
import zlib
from pathlib import Path
from typing import List, Tuple

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000


def utterance_rng(seed: int, cut_id: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(cut_id.encode("utf-8"))])


def add_noise(samples: np.ndarray, std: float, rng: np.random.Generator) -> Tuple[np.ndarray, int]:
    """(noisy samples clipped to [-1, 1], number of clipped samples)."""
    noisy = samples.astype(np.float64) + std * rng.standard_normal(samples.shape)
    clipped = int(np.count_nonzero(np.abs(noisy) > 1.0))
    return np.clip(noisy, -1.0, 1.0), clipped


def noisy_rows(cuts, std: float, seed: int, out_dir: Path, split: str) -> Tuple[List[dict], int]:
    """Write ``out_dir/<cut id>.flac`` for every cut; (metadata rows for the manifest stage, clipped samples)."""
    if std <= 0:
        raise ValueError(f"noise std must be > 0, got {std}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, clipped = [], 0
    for cut in cuts:
        if cut.sampling_rate != SAMPLE_RATE or cut.num_channels != 1:
            raise ValueError(f"{cut.id}: expected 16 kHz mono cuts, got {cut.sampling_rate} Hz x {cut.num_channels}")
        audio = cut.load_audio()[0]
        noisy, n = add_noise(audio, std, utterance_rng(seed, cut.id))
        clipped += n
        path = out_dir / f"{cut.id}.flac"
        sf.write(path, noisy, SAMPLE_RATE, subtype="PCM_24")
        sup = cut.supervisions[0]
        custom = dict(cut.custom or {})
        rows.append(dict(custom, id=cut.id, audio=str(path), text=sup.text, voice=sup.speaker, split=split,
                         noise_type=f"gaussian-std{std:g}"))
    if clipped:
        logging.warning(f"{split}: {clipped} samples clipped to +-1 after adding noise of std {std:g}")
    return rows, clipped
