"""Common Voice in its release layout -> lhotse manifests, with every skip counted.

    cv-corpus-<version>-<date>/<lang>/{train,dev,test,validated,...}.tsv
    cv-corpus-<version>-<date>/<lang>/clips/<common_voice_<lang>_<n>.mp3>

The TSV is tab-separated with a header; its columns changed over the releases
(``client_id path sentence up_votes down_votes age gender accents locale segment``
in v11, ``variant`` from v13, ``sentence_id`` and ``sentence_domain`` from v17). Only
``client_id``, ``path`` and ``sentence`` are required; the rest are kept when present.
As lhotse's ``prepare_commonvoice`` does: the recording and supervision id is the clip's
stem, the speaker its ``client_id``, rows are read with ``csv.QUOTE_NONE`` (the sentences
hold unbalanced quotes), and the text is the stripped sentence. Unlike it, a row whose
clip is missing, whose mp3 does not decode or whose sentence is empty is skipped *and
counted* (an error beyond ``max_skipped`` of the split), never dropped silently.
Clips (48 or 32 kHz mp3) are resampled to 16 kHz lazily by lhotse.
"""

import csv
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from lhotse import RecordingSet, SupervisionSegment, SupervisionSet, validate_recordings_and_supervisions

from speechadapt.data.corpora.report import PrepReport
from speechadapt.data.manifests import AudioFileError, load_recording, make_cuts, manifest_paths

REQUIRED_COLUMNS = ("client_id", "path", "sentence")
# v17+ layout (the miniature writes it); older releases lack sentence_id, sentence_domain, variant
TSV_COLUMNS = ("client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age",
               "gender", "accents", "variant", "locale", "segment")
KEPT_FIELDS = ("age", "gender", "accents", "variant", "locale", "sentence_id")


def find_language_dir(corpus_dir: Path, lang: str) -> Path:
    """``corpus_dir`` may be the release folder (``cv-corpus-*``), its parent, or the language folder."""
    corpus_dir = Path(corpus_dir)
    candidates = [corpus_dir] if (corpus_dir / "clips").is_dir() else []
    candidates += [corpus_dir / lang] + sorted(corpus_dir.glob(f"cv-corpus-*/{lang}"))
    for path in candidates:
        if (path / "clips").is_dir():
            return path
    found = sorted(p.name for p in corpus_dir.iterdir()) if corpus_dir.is_dir() else []
    raise FileNotFoundError(f"{corpus_dir}: no Common Voice folder for language {lang!r} "
                            f"(expected cv-corpus-*/{lang}/clips and {lang}/train.tsv; found {found or 'nothing'})")


def read_tsv(path: Path) -> List[Dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such Common Voice split file")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: header lacks column(s) {missing} (has {reader.fieldnames})")
        rows = []
        for lineno, row in enumerate(reader, 2):
            if None in row or any(row[c] is None for c in REQUIRED_COLUMNS):
                raise ValueError(f"{path}:{lineno}: expected {len(reader.fieldnames)} tab-separated fields")
            rows.append(row)
    return rows


def _load(clip: Path, rec_id: str):
    try:
        return load_recording(clip, rec_id), None
    except AudioFileError as e:
        return None, str(e)


def prepare_split(lang_dir: Path, split: str, lang: str, num_jobs: int = 1
                  ) -> Tuple[RecordingSet, SupervisionSet, PrepReport]:
    rows = read_tsv(lang_dir / f"{split}.tsv")
    report = PrepReport(split=split, rows=len(rows))
    todo, seen = [], set()
    for row in rows:
        rec_id = Path(row["path"]).stem
        text = " ".join(row["sentence"].split())
        clip = lang_dir / "clips" / row["path"]
        if rec_id in seen:
            report.skip("duplicate clip", row["path"])
        elif not text:
            report.skip("empty sentence", row["path"])
        elif not clip.is_file():
            report.skip("missing clip", str(clip))
        else:
            seen.add(rec_id)
            todo.append((row, rec_id, text, clip))
    quiet = logging.getLogger("speechadapt.data.manifests")  # one resampling warning per clip otherwise
    level, quiet.level = quiet.level, logging.ERROR
    try:
        with ThreadPoolExecutor(max(1, num_jobs)) as pool:
            loaded = list(pool.map(lambda t: _load(t[3], t[1]), todo))
    finally:
        quiet.setLevel(level)
    recordings, supervisions = [], []
    for (row, rec_id, text, clip), (recording, error) in zip(todo, loaded):
        if recording is None:
            report.skip("audio does not decode", error)
            continue
        custom = {k: row[k] for k in KEPT_FIELDS if row.get(k)}
        custom.update(split=split, voice=row["client_id"])
        recordings.append(recording)
        supervisions.append(SupervisionSegment(
            id=rec_id, recording_id=rec_id, start=0.0, duration=recording.duration, channel=0, text=text,
            language=lang, speaker=row["client_id"], gender=row.get("gender") or None, custom=custom))
    report.kept = len(recordings)
    rates = sorted({getattr(t, "source_sampling_rate", None) for r in recordings for t in (r.transforms or [])}
                   - {None})
    if rates:
        logging.info(f"{split}: clips at {rates} Hz, resampled to 16 kHz on reading")
    return RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(supervisions), report


def prepare_commonvoice(corpus_dir: Path, lang: str, splits, manifest_dir: Path, prefix: Optional[str] = None,
                        max_skipped: float = 0.01, num_jobs: int = 1) -> Dict[str, PrepReport]:
    """Write ``<prefix>_{recordings,supervisions,cuts}_<split>.jsonl.gz`` (prefix ``cv-<lang>``
    as lhotse and icefall name them) and ``<split>.report.json``; split -> report."""
    lang_dir = find_language_dir(corpus_dir, lang)
    prefix = prefix or f"cv-{lang}"
    reports = {}
    for split in splits:
        recordings, supervisions, report = prepare_split(lang_dir, split, lang, num_jobs)
        report.check(max_skipped)
        validate_recordings_and_supervisions(recordings, supervisions)
        paths = manifest_paths(manifest_dir, split, prefix)
        paths["cuts"].parent.mkdir(parents=True, exist_ok=True)
        recordings.to_file(paths["recordings"])
        supervisions.to_file(paths["supervisions"])
        make_cuts(recordings, supervisions).to_file(paths["cuts"])
        report.write(Path(manifest_dir) / f"{prefix}_{split}.report.json")
        logging.info(report.line())
        reports[split] = report
    return reports
