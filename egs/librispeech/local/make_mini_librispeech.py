#!/usr/bin/env python3
"""Write a miniature LibriSpeech tree in the real on-disk layout, spoken by espeak-ng.

    python3 local/make_mini_librispeech.py --out-dir download/LibriSpeech

``LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` with one
``<speaker>-<chapter>.trans.txt`` per chapter (upper-case text, apostrophes), speakers
with several chapters, ``SPEAKERS.TXT`` / ``CHAPTERS.TXT`` / ``README.TXT`` at the top as
in the release, so the recipe's real parsing code runs without the 60 GB download (the
``--smoke`` recipe). Sizes are per part: speakers x chapters x utterances.
"""

import argparse
import logging
import random
from pathlib import Path

from speechadapt.data.grammar import sample_sentence
from speechadapt.data.synth import synthesise_files

PARTS = {  # part -> (speakers, chapters per speaker, utterances per chapter), voices differ per part
    "train-clean-100": (3, 2, 6),
    "dev-clean": (1, 2, 2),
    "dev-other": (1, 1, 4),
    "test-clean": (1, 2, 2),
    "test-other": (1, 1, 4),
}
VOICES = ["en-us", "en+m3", "en+f2", "en-gb-scotland", "en+m5", "en+f4", "en-us+m2"]
APOSTROPHES = ["IT'S SEVEN O'CLOCK", "DON'T OPEN THE DOOR", "THE DOG'S BOWL IS EMPTY", "I'LL CALL ALICE"]


def speaker_id(part_index: int, k: int) -> int:
    return 100 + 37 * part_index + 11 * k  # distinct across parts, like the release


def plan(seed: int):
    """[(part, speaker, chapter, utterance id, text, voice settings)]."""
    rng = random.Random(seed)
    rows = []
    for p, (part, (speakers, chapters, utts)) in enumerate(PARTS.items()):
        for s in range(speakers):
            spk = speaker_id(p, s)
            voice = VOICES[(p * 3 + s) % len(VOICES)]
            for c in range(chapters):
                chapter = 1000 * spk + 10 * c + 7
                for u in range(utts):
                    text = rng.choice(APOSTROPHES) if u == 1 else sample_sentence(rng).upper()
                    settings = dict(voice=voice, rate=rng.randint(150, 190), pitch=rng.randint(35, 65), pitch_range=50)
                    rows.append((part, spk, chapter, f"{spk}-{chapter}-{u:04d}", text, settings))
    return rows


def write_tree(out: Path, seed: int = 0, num_jobs: int = 1) -> Path:
    rows = plan(seed)
    groups = {}
    for part, spk, chapter, utt, text, settings in rows:
        path = out / part / str(spk) / str(chapter) / f"{utt}.flac"
        groups.setdefault(part, []).append((str(path), text.lower(), settings))  # espeak reads lower case
    synthesise_files(list(groups.values()), chunk_size=16, num_jobs=num_jobs, seed=seed)
    transcripts = {}
    for part, spk, chapter, utt, text, _ in rows:
        transcripts.setdefault(out / part / str(spk) / str(chapter) / f"{spk}-{chapter}.trans.txt", []).append(
            f"{utt} {text}")
    for path, lines in transcripts.items():
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    speakers = sorted({(spk, part) for part, spk, *_ in rows})
    (out / "SPEAKERS.TXT").write_text(
        "; Some of the information in this file is made up, as is the audio (espeak-ng)\n"
        ";ID  |SEX| SUBSET           |MINUTES| NAME\n"
        + "".join(f"{spk:<5}| {'F' if i % 2 else 'M'} | {part:<17}| 0.50 | Speaker {spk}\n"
                  for i, (spk, part) in enumerate(speakers)), encoding="utf-8")
    chapters = sorted({(chapter, spk, part) for part, spk, chapter, *_ in rows})
    (out / "CHAPTERS.TXT").write_text(
        ";ID      |READER|MINUTES| SUBSET           | PROJ.|BOOK ID| CH. TITLE | PROJECT TITLE\n"
        + "".join(f"{ch:<8}| {spk:<5}| 0.25 | {part:<17}| 1 | 1 | Chapter {ch} | Synthetic\n"
                  for ch, spk, part in chapters), encoding="utf-8")
    (out / "README.TXT").write_text("A miniature LibriSpeech made by speechadapt for tests.\n", encoding="utf-8")
    logging.info(f"wrote {len(rows)} utterances in {len(PARTS)} parts under {out}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, required=True, help="the LibriSpeech folder to create")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-jobs", type=int, default=1)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    write_tree(args.out_dir, args.seed, args.num_jobs)


if __name__ == "__main__":
    main()
