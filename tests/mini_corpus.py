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


def data_flags(root):
    return ["--manifest-dir", str(root / "fbank"), "--cuts-prefix", PREFIX, "--max-duration", "6",
            "--num-workers", "0", "--num-buckets", "2"]


def train_mini_ctc(root):
    """train / adapt / dev / test splits under ``root`` and a Zipformer-CTC trained one
    epoch on train in ``root/src`` (the source model of the adaptation tests)."""
    from speechadapt.bin import train
    from speechadapt.data.bpe import prepare_lang_bpe

    write_split(root, "train", TEXTS * 2, 0)
    write_split(root, "adapt", TEXTS, 1)
    write_split(root, "dev", TEXTS[:3], 2)
    write_split(root, "test", TEXTS[3:6], 3)
    prepare_lang_bpe(TEXTS, root / "lang", 30)
    train.main(["--model", "zipformer_ctc", "--lang-dir", str(root / "lang"), "--exp-dir", str(root / "src"),
                "--train-split", "train", "--num-epochs", "1", "--regularize", "false", "--enable-spec-aug", "false",
                "--save-every-n", "0", "--average-period", "0", "--tensorboard", "false", *data_flags(root)])
    return root


def wav_digests(audio_dir) -> dict:
    """relative path -> md5 of every .wav under ``audio_dir`` (the corpus tests' byte-identity check)."""
    import hashlib
    from pathlib import Path

    audio_dir = Path(audio_dir)
    return {str(p.relative_to(audio_dir)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(audio_dir.rglob("*.wav"))}
