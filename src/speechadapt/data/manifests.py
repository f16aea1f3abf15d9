"""lhotse manifests (recordings, supervisions, cuts as jsonl.gz) from corpus metadata.

Bad input is handled here, once, before anything is trained on it:
- an unreadable, corrupt or truncated audio file is an :class:`AudioFileError` naming it;
- audio at another sample rate is resampled (lazily, by lhotse) or rejected;
- an utterance with an empty transcript is logged and skipped.
Every cut carries the custom fields its rows have (``domain``, ``voice``, ``split``,
``seen_in_train``, ``noise_type``, ``snr_db``; LibriSpeech: ``chapter``, ``gender``),
reachable as ``cut.domain`` etc., so scoring can report WER on unseen sentences and per voice.
"""

import logging
import struct
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse import validate_recordings_and_supervisions
from lhotse.utils import fastcopy

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CUT_FIELDS = ("domain", "voice", "synthesiser", "split", "seen_in_train", "noise_type", "snr_db")
EXTRA_FIELDS = ("chapter", "gender")  # read corpora (LibriSpeech)


class AudioFileError(ValueError):
    """An audio file that cannot be used; the message names the file."""


def manifest_paths(manifest_dir, split: str, prefix: str) -> Dict[str, Path]:
    """icefall-style names: ``{prefix}_{recordings,supervisions,cuts}_{split}.jsonl.gz``."""
    d = Path(manifest_dir)
    return {kind: d / f"{prefix}_{kind}_{split}.jsonl.gz"
            for kind in ("recordings", "supervisions", "cuts")}


class ManifestError(ValueError):
    """A manifest file that cannot be read; the message names the file and the line."""


def open_manifest(path, lazy: bool = True):
    """A lhotse manifest (.jsonl / .jsonl.gz), checked line by line first: a truncated
    file or a broken line is a :class:`ManifestError` naming the file and the line
    (lhotse alone fails later, mid-epoch, without either)."""
    import gzip
    import json
    import zlib

    from lhotse import load_manifest, load_manifest_lazy

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    opener = gzip.open if path.name.endswith(".gz") else open
    number = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    json.loads(line)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}:{number}: not a JSON line ({e.msg} at column {e.colno})") from None
    except (EOFError, OSError, zlib.error, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: truncated or corrupt after line {number} ({type(e).__name__}: {e})") from None
    if number == 0:
        raise ManifestError(f"{path} is empty")
    return load_manifest_lazy(path) if lazy else load_manifest(path)


def check_wav_complete(path) -> None:
    """Raise AudioFileError when a RIFF/WAVE file holds fewer audio bytes than its
    header declares (libsndfile would silently read the shorter file)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise AudioFileError(f"{path}: not a RIFF/WAVE file (corrupt header)")
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                available = size - pos - 8
                if chunk_size > available:
                    raise AudioFileError(
                        f"{path}: truncated wav (header declares {chunk_size} bytes of audio, "
                        f"the file holds {available})")
                return
            pos += 8 + chunk_size + (chunk_size & 1)
    raise AudioFileError(f"{path}: wav file has no 'data' chunk (corrupt or truncated)")


def load_recording(path, recording_id: str, on_wrong_rate: str = "resample",
                   allow_multichannel: bool = False) -> Recording:
    """A validated Recording at 16 kHz for ``path`` (mono unless ``allow_multichannel``).

    ``on_wrong_rate``: ``"resample"`` (lazily, by lhotse, with a warning) or ``"error"``.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"{path}: audio file does not exist")
    if path.suffix.lower() == ".wav":
        check_wav_complete(path)
    try:
        recording = Recording.from_file(path, recording_id=recording_id)
    except Exception as exc:  # lhotse wraps every backend's failure
        raise AudioFileError(f"{path}: cannot read audio ({type(exc).__name__}: {exc})") from exc
    if recording.num_channels != 1 and not allow_multichannel:
        raise AudioFileError(f"{path}: expected mono audio, found {recording.num_channels} channels")
    if recording.num_samples == 0:
        raise AudioFileError(f"{path}: audio file holds no samples")
    if recording.sampling_rate != SAMPLE_RATE:
        if on_wrong_rate != "resample":
            raise AudioFileError(
                f"{path}: sample rate {recording.sampling_rate} Hz, expected {SAMPLE_RATE} Hz "
                "(pass --on-wrong-rate resample to resample it)")
        logger.warning("%s: sample rate %d Hz, resampling to %d Hz",
                       path, recording.sampling_rate, SAMPLE_RATE)
        recording = recording.resample(SAMPLE_RATE)
    return recording


def rows_to_manifests(rows: Iterable[dict], on_wrong_rate: str = "resample"
                      ) -> Tuple[RecordingSet, SupervisionSet, List[str]]:
    """Metadata rows (id, audio, text, voice, ...) -> manifests; returns skipped ids too.

    Rows whose transcript is empty are reported and skipped.
    """
    recordings, supervisions, skipped = [], [], []
    for row in rows:
        text = " ".join(str(row.get("text") or "").split())
        if not text:
            logger.warning("utterance %s (%s) has an empty transcript: skipped",
                           row.get("id"), row.get("audio"))
            skipped.append(row.get("id"))
            continue
        recording = load_recording(row["audio"], row["id"], on_wrong_rate)
        recordings.append(recording)
        custom = {k: row.get(k) for k in CUT_FIELDS + EXTRA_FIELDS if k in row}
        supervisions.append(SupervisionSegment(
            id=row["id"], recording_id=row["id"], start=0.0, duration=recording.duration,
            channel=0, text=text, speaker=row.get("voice"), language="en", custom=custom))
    if skipped:
        logger.warning("skipped %d utterance(s) with empty transcripts", len(skipped))
    return RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(supervisions), skipped


def make_cuts(recordings: RecordingSet, supervisions: Optional[SupervisionSet] = None) -> CutSet:
    """One cut per recording with id = recording id; supervision custom fields copied to the cut."""
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    return CutSet.from_cuts(_finalise_cut(c) for c in cuts)


def _finalise_cut(cut):
    """Cut id = recording id (lhotse appends an index); custom fields from the supervision."""
    custom = dict(cut.supervisions[0].custom or {}) if cut.supervisions else None
    return fastcopy(cut, id=cut.recording_id, custom=custom or cut.custom)


def write_split_manifests(rows: List[dict], split: str, manifest_dir,
                          prefix: str, on_wrong_rate: str = "resample") -> CutSet:
    """Validate and write recordings, supervisions and cuts of one split; returns the cuts."""
    recordings, supervisions, skipped = rows_to_manifests(rows, on_wrong_rate)
    if len(recordings) == 0:
        raise ValueError(f"split {split}: no usable utterances")
    validate_recordings_and_supervisions(recordings, supervisions)
    cuts = make_cuts(recordings, supervisions)
    lost = sorted({str(r.get("id")) for r in rows} - {c.id for c in cuts} - {str(i) for i in skipped})
    if lost or len(cuts) + len(skipped) != len(rows):
        raise ValueError(f"split {split}: {len(rows)} rows in, {len(cuts)} cuts out and {len(skipped)} skipped "
                         f"for empty transcripts (duplicate ids?); lost: {lost[:10]}")
    paths = manifest_paths(manifest_dir, split, prefix)
    paths["cuts"].parent.mkdir(parents=True, exist_ok=True)
    recordings.to_file(paths["recordings"])
    supervisions.to_file(paths["supervisions"])
    cuts.to_file(paths["cuts"])
    return cuts


def write_noise_manifests(rows: List[dict], manifest_dir, prefix: str, split: str) -> CutSet:
    """Noise recordings (no supervisions) as recordings and cuts, for on-the-fly mixing."""
    recordings = RecordingSet.from_recordings(load_recording(r["audio"], r["id"]) for r in rows)
    noise_type = {r["id"]: r.get("noise_type", "unknown") for r in rows}
    cuts = CutSet.from_cuts(fastcopy(c, custom={"noise_type": noise_type[c.recording_id]})
                            for c in make_cuts(recordings))
    paths = manifest_paths(manifest_dir, split, prefix)
    paths["cuts"].parent.mkdir(parents=True, exist_ok=True)
    recordings.to_file(paths["recordings"])
    cuts.to_file(paths["cuts"])
    return cuts
