#!/usr/bin/env python3
"""Stage: the metadata rows of a local LibriSpeech tree (and optionally MUSAN), for prepare_manifests.py.

    python3 local/parse_librispeech.py --corpus-dir download/LibriSpeech \
        --parts train-clean-100,dev-clean,test-clean --out-dir data/meta [--musan-dir download/musan]

Reads the release's layout, ``<part>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt``
(``<speaker>-<chapter>-<utt> TEXT`` lines, upper case, apostrophes kept) next to
``<speaker>-<chapter>-<utt>.flac``, and ``SPEAKERS.TXT`` for each speaker's sex. Writes
``<out-dir>/<part>.jsonl`` (id, audio, text, voice = speaker, chapter, gender, split) and
``<part>.report.json`` (counts). Then ``local/prepare_manifests.py --audio-dir <out-dir>``
builds the manifests with the project's audio checks (a flac that does not decode is an
error naming it). A missing part is an error that lists the parts found; a transcript line
whose audio is missing is skipped and counted (as lhotse and icefall skip it), an error
beyond ``--max-missing`` of the part; flacs without a transcript line and other files are
counted and left alone; a malformed line or an id of another chapter is an error naming
the file and line. With ``--musan-dir``: ``musan.jsonl`` of its noise/music/speech wavs
(``noise_type`` = the subfolder), a noise split for prepare_manifests' ``--noise-splits``.
"""

import argparse
import json
import logging
from pathlib import Path
from typing import Dict, List, Tuple

from speechadapt.data.prep_utils import comma_list, setup_stage_logging, write_jsonl


def read_speaker_sexes(corpus_dir: Path) -> Dict[str, str]:
    """speaker id -> "M"/"F" from SPEAKERS.TXT (``ID | SEX | SUBSET | MINUTES | NAME``; ``;`` comments)."""
    path = corpus_dir / "SPEAKERS.TXT"
    if not path.is_file():
        return {}
    sexes = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = [f.strip() for f in line.split("|")]
        if line.startswith(";") or len(fields) < 2 or not fields[0].isdigit():
            continue
        sexes[fields[0]] = fields[1]
    return sexes


def parse_part(corpus_dir: Path, part: str, sexes: Dict[str, str]) -> Tuple[List[dict], dict]:
    part_dir = corpus_dir / part
    if not part_dir.is_dir():
        found = sorted(p.name for p in corpus_dir.iterdir() if p.is_dir()) if corpus_dir.is_dir() else []
        raise FileNotFoundError(f"{part_dir}: LibriSpeech part {part!r} not found (found: {found or 'nothing'}; "
                                f"corpus dir {corpus_dir})")
    rows, missing, transcribed = [], [], set()
    transcripts = sorted(part_dir.rglob("*.trans.txt"))
    if not transcripts:
        raise FileNotFoundError(f"{part_dir}: no <speaker>-<chapter>.trans.txt file")
    for trans in transcripts:
        speaker, chapter = trans.parent.parent.name, trans.parent.name
        if trans.name != f"{speaker}-{chapter}.trans.txt":
            raise ValueError(f"{trans}: expected {speaker}-{chapter}.trans.txt in {speaker}/{chapter}/")
        for lineno, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            if not utt_id.startswith(f"{speaker}-{chapter}-"):
                raise ValueError(f"{trans}:{lineno}: id {utt_id!r} does not belong to chapter {speaker}-{chapter}")
            audio = trans.parent / f"{utt_id}.flac"
            transcribed.add(audio.name)
            if not audio.is_file():
                missing.append(utt_id)
                continue
            rows.append(dict(id=utt_id, audio=str(audio), text=text.strip(), voice=speaker, chapter=chapter,
                             gender=sexes.get(speaker), split=part))
    flacs = [p for p in part_dir.rglob("*") if p.is_file() and p.suffix.lower() == ".flac"]
    others = [p for p in part_dir.rglob("*") if p.is_file() and p.suffix.lower() != ".flac"
              and not p.name.endswith(".trans.txt")]
    report = dict(part=part, transcript_files=len(transcripts), lines=len(rows) + len(missing), rows=len(rows),
                  missing_audio=len(missing), missing_audio_ids=missing[:20],
                  untranscribed_flac=sum(1 for p in flacs if p.name not in transcribed), other_files=len(others),
                  speakers=len({r["voice"] for r in rows}), chapters=len({r["chapter"] for r in rows}))
    return rows, report


def parse_musan(musan_dir: Path) -> List[dict]:
    if not musan_dir.is_dir():
        raise FileNotFoundError(f"--musan-dir {musan_dir}: no such directory")
    rows = [dict(id=f"musan-{p.relative_to(musan_dir).with_suffix('').as_posix().replace('/', '-')}", audio=str(p),
                 noise_type=p.relative_to(musan_dir).parts[0]) for p in sorted(musan_dir.rglob("*.wav"))]
    if not rows:
        raise FileNotFoundError(f"--musan-dir {musan_dir}: no .wav file below it")
    return rows


def main(argv=None) -> None:
    setup_stage_logging()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus-dir", type=Path, required=True, help="the LibriSpeech folder (holds the parts)")
    p.add_argument("--parts", type=comma_list, required=True, help="e.g. train-clean-100,dev-clean,test-clean")
    p.add_argument("--out-dir", type=Path, required=True, help="where <part>.jsonl and <part>.report.json go")
    p.add_argument("--max-missing", type=float, default=0.01,
                   help="fraction of a part's transcript lines whose audio may be missing (skipped)")
    p.add_argument("--musan-dir", type=Path, default=None, help="also list MUSAN's wavs (musan.jsonl)")
    args = p.parse_args(argv)
    sexes = read_speaker_sexes(args.corpus_dir)
    reports = []
    for part in args.parts:
        rows, report = parse_part(args.corpus_dir, part, sexes)
        if report["missing_audio"]:
            logging.warning(f"{part}: {report['missing_audio']} transcript line(s) without audio skipped, "
                            f"e.g. {report['missing_audio_ids'][:5]}")
            if report["missing_audio"] > args.max_missing * report["lines"]:
                raise SystemExit(f"error: {part}: {report['missing_audio']} of {report['lines']} utterances have no "
                                 f"audio (more than --max-missing {args.max_missing}); is the part complete?")
        if not rows:
            raise SystemExit(f"error: {part}: no utterance with audio")
        write_jsonl(rows, args.out_dir / f"{part}.jsonl")
        (args.out_dir / f"{part}.report.json").write_text(json.dumps(report, indent=1) + "\n")
        reports.append(report)
        print(f"{part}: {report['rows']} utterances, {report['speakers']} speakers, {report['chapters']} chapters, "
              f"{report['missing_audio']} missing audio, {report['untranscribed_flac']} untranscribed flac, "
              f"{report['other_files']} other files")
    if args.musan_dir:
        rows = parse_musan(args.musan_dir)
        write_jsonl(rows, args.out_dir / "musan.jsonl")
        print(f"musan: {len(rows)} recordings")


if __name__ == "__main__":
    main()
