"""A few seconds of noise per sentence as a lhotse corpus with fbank: what the tests
that run entry points end to end train, adapt and decode on (no speech needed)."""

import numpy as np
import soundfile as sf

TEXTS = ["turn on the lights", "call alice now", "play some music", "open the door",
         "set an alarm for seven", "what time is it", "call bob", "stop the music"]
PREFIX = "mini"


def write_split(root, split, texts, seed=0):
    """``root/wav/<split>-<i>.wav`` (1.0-1.6 s) and ``root/fbank/mini_cuts_<split>.jsonl.gz``."""
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    from speechadapt.data.features import featurise_split

    rng = np.random.default_rng(seed)
    recordings, supervisions = [], []
    for i, text in enumerate(texts):
        path = root / "wav" / f"{split}-{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, (0.1 * rng.standard_normal(int(16000 * (1.0 + 0.2 * (i % 4))))).astype(np.float32), 16000)
        rec = Recording.from_file(path, recording_id=f"{split}-{i}")
        recordings.append(rec)
        supervisions.append(SupervisionSegment(f"{split}-{i}", rec.id, 0.0, rec.duration, text=text))
    cuts = CutSet.from_manifests(RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(supervisions))
    return featurise_split(cuts, root / "fbank", split, PREFIX)
