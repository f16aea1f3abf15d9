"""TED-LIUM release 3 (the legacy distribution) -> lhotse manifests, one cut per scored segment.

    TEDLIUM_release-3/legacy/{train,dev,test}/sph/<talk>.sph    (NIST SPHERE, 16 kHz, 16 bit)
    TEDLIUM_release-3/legacy/{train,dev,test}/stm/<talk>.stm

An STM line is ``<talk> <channel> <speaker> <start> <end> <label> <words...>``; lines
whose words are ``ignore_time_segment_in_scoring`` mark audio that is not scored. As in
lhotse's ``prepare_tedlium``: supervision ids ``<talk>-<line index>``, the speaker is the
talk, ``{NOISE}`` is read as ``[NOISE]``; the text then goes through lhotse's Kaldi-style
TED-LIUM normalisation (``[NOISE]``-like tokens and ``<unk>`` removed, ``they 're`` ->
``they're``). Unlike it (whose ``fix_manifests`` trims or drops such segments without a
word), a segment that is reversed, empty after normalisation, of a talk without audio or
lying outside its audio is skipped and counted with its file and line (an error beyond
``max_skipped``); ignored segments are counted apart.
"""

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from lhotse import CutSet, RecordingSet, SupervisionSegment, SupervisionSet, validate_recordings_and_supervisions
from lhotse.recipes.utils import normalize_text_tedlium
from lhotse.utils import fastcopy

from speechadapt.data.corpora.report import PrepReport
from speechadapt.data.manifests import AudioFileError, load_recording, manifest_paths

IGNORE = "ignore_time_segment_in_scoring"
# an STM end this far past the audio is rounding; further is a segment outside its audio
END_TOLERANCE_S = 0.05
LIBSNDFILE = "LibsndfileBackend"


def sphere_backend_env() -> dict:
    """lhotse reads .sph through the sph2pipe binary and nothing else; TED-LIUM 3's files
    are plain 16-bit PCM, which libsndfile reads too. Without sph2pipe on PATH: the
    environment (``LHOTSE_AUDIO_BACKEND``) under which lhotse reads them with libsndfile
    (the recipes export it for every stage)."""
    if shutil.which("sph2pipe") or os.environ.get("LHOTSE_AUDIO_BACKEND"):
        return {}
    return {"LHOTSE_AUDIO_BACKEND": LIBSNDFILE}


@contextlib.contextmanager
def sphere_readable():
    """Within: lhotse reads NIST SPHERE files in this process (libsndfile without sph2pipe)."""
    from lhotse.audio import backend

    if not sphere_backend_env():
        yield
        return
    before = backend.CURRENT_AUDIO_BACKEND
    backend.set_current_audio_backend(LIBSNDFILE)
    try:
        yield
    finally:
        backend.CURRENT_AUDIO_BACKEND = before


def split_dir(corpus_dir: Path, split: str) -> Path:
    corpus_dir = Path(corpus_dir)
    for root in (corpus_dir / "legacy", corpus_dir):
        if (root / split / "stm").is_dir():
            return root / split
    raise FileNotFoundError(f"{corpus_dir}: no TED-LIUM split {split!r} (expected legacy/{split}/sph and "
                            f"legacy/{split}/stm below TEDLIUM_release-3)")


def parse_stm_line(line: str) -> Tuple[str, str, float, float, str]:
    """(talk, speaker, start, end, words) of one STM line; ValueError when malformed."""
    fields = line.split()
    if len(fields) < 6:
        raise ValueError(f"expected '<talk> <channel> <speaker> <start> <end> <label> words', got {line.strip()!r}")
    talk, _, speaker, start, end = fields[:5]
    words = " ".join(fields[6:]) if fields[5].startswith("<") else " ".join(fields[5:])
    return talk, speaker, float(start), float(end), words


def normalise(words: str) -> str:
    return " ".join(normalize_text_tedlium(words.replace("{NOISE}", "[NOISE]"), "kaldi").split())


def prepare_split(corpus_dir: Path, split: str) -> Tuple[RecordingSet, SupervisionSet, PrepReport]:
    root = split_dir(corpus_dir, split)
    recordings = {}
    with sphere_readable():
        for sph in sorted((root / "sph").glob("*.sph")):
            try:
                recordings[sph.stem] = load_recording(sph, sph.stem)
            except AudioFileError as e:
                raise AudioFileError(f"{split}: {e}") from None
    report = PrepReport(split=split)
    segments: List[SupervisionSegment] = []
    stms = sorted((root / "stm").glob("*.stm"))
    if not stms:
        raise FileNotFoundError(f"{root / 'stm'}: no .stm file")
    for stm in stms:
        for idx, line in enumerate(stm.read_text(encoding="utf-8").splitlines()):
            if not line.strip() or line.startswith(";;"):
                continue
            where = f"{stm}:{idx + 1}"
            try:
                talk, _, start, end, words = parse_stm_line(line)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            report.rows += 1
            if words.strip() == IGNORE:
                report.ignored += 1
                continue
            recording = recordings.get(talk)
            text = normalise(words)
            if recording is None:
                report.skip("talk without audio", where)
            elif end <= start:
                report.skip("reversed or empty segment", where)
            elif start >= recording.duration or end > recording.duration + END_TOLERANCE_S:
                report.skip("segment outside its audio", f"{where} ({start:.2f}-{end:.2f} s, audio "
                                                         f"{recording.duration:.2f} s)")
            elif not text:
                report.skip("empty transcript", where)
            else:
                end = min(end, recording.duration)
                segments.append(SupervisionSegment(
                    id=f"{talk}-{idx}", recording_id=talk, start=start, duration=round(end - start, 8), channel=0,
                    text=text, language="English", speaker=talk, custom={"split": split, "voice": talk}))
    report.rows -= report.ignored  # scored lines only: ignored ones are neither kept nor skipped
    report.kept = len(segments)
    unused = sorted(set(recordings) - {s.recording_id for s in segments})
    if unused:
        logging.warning(f"{split}: {len(unused)} talk(s) with audio but no scored segment, e.g. {unused[:3]}")
    return RecordingSet.from_recordings(recordings.values()), SupervisionSet.from_segments(segments), report


def segment_cuts(recordings: RecordingSet, supervisions: SupervisionSet) -> CutSet:
    """One cut per supervision, id = supervision id, its custom fields on the cut."""
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    trimmed = cuts.trim_to_supervisions(keep_overlapping=False)
    return CutSet.from_cuts(fastcopy(c, id=c.supervisions[0].id, custom=dict(c.supervisions[0].custom or {}))
                            for c in trimmed)


def prepare_tedlium(corpus_dir: Path, splits, manifest_dir: Path, prefix: str = "tedlium",
                    max_skipped: float = 0.01) -> Dict[str, PrepReport]:
    reports = {}
    for split in splits:
        recordings, supervisions, report = prepare_split(corpus_dir, split)
        report.check(max_skipped)
        validate_recordings_and_supervisions(recordings, supervisions)
        cuts = segment_cuts(recordings, supervisions)
        if len(cuts) != report.kept:
            raise ValueError(f"{split}: {report.kept} segments but {len(cuts)} cuts")
        paths = manifest_paths(manifest_dir, split, prefix)
        paths["cuts"].parent.mkdir(parents=True, exist_ok=True)
        recordings.to_file(paths["recordings"])
        supervisions.to_file(paths["supervisions"])
        cuts.to_file(paths["cuts"])
        report.write(Path(manifest_dir) / f"{prefix}_{split}.report.json")
        logging.info(report.line())
        reports[split] = report
    return reports


def speaker_halves(cuts, min_per_speaker: int = 2) -> Tuple[CutSet, CutSet, Optional[str]]:
    """Two halves with the same speakers (segments alternate within each talk, in time
    order), for the closed-set speaker probe; speakers with too few segments are left out
    and named in the third value."""
    by_speaker: Dict[str, list] = {}
    for cut in cuts:
        by_speaker.setdefault(cut.supervisions[0].speaker, []).append(cut)
    first, second, dropped = [], [], []
    for speaker, group in sorted(by_speaker.items()):
        if len(group) < min_per_speaker:
            dropped.append(speaker)
            continue
        group.sort(key=lambda c: (c.recording_id, c.start))
        first += group[0::2]
        second += group[1::2]
    if not first:
        raise ValueError(f"no speaker has {min_per_speaker} segments: nothing to probe")
    note = f"{len(dropped)} speaker(s) with fewer than {min_per_speaker} segments left out: {dropped}" if dropped else None
    return CutSet.from_cuts(first), CutSet.from_cuts(second), note
