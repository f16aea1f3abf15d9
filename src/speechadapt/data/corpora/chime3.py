"""CHiME-3's evaluation sets (LDC2017S24) in their real layout -> metadata rows.

    CHiME3/data/audio/16kHz/enhanced/et05_{bus,caf,ped,str}_{real,simu}/<utt>.wav
    CHiME3/data/transcriptions/et05_{bus,caf,ped,str}_{real,simu}/<utt>.trn   ("<utt> WORDS")

the single-channel output of the challenge's baseline enhancement, the set SUTA scores
(all eight et05 sets: its "chime-overall"). The rows go to ``local/prepare_manifests.py``
(or :func:`speechadapt.data.manifests.write_split_manifests`), whose audio checks name a
wav that does not decode. A wav without a transcription file is skipped and counted.
"""

from pathlib import Path
from typing import List, Sequence, Tuple

from speechadapt.data.corpora.report import PrepReport

ET05_SETS = tuple(f"et05_{env}_{kind}" for env in ("bus", "caf", "ped", "str") for kind in ("real", "simu"))


def chime3_rows(chime3_dir: Path, sets: Sequence[str] = ET05_SETS, audio: str = "enhanced",
                split: str = "chime3-et05") -> Tuple[List[dict], PrepReport]:
    chime3_dir = Path(chime3_dir)
    audio_root = chime3_dir / "data" / "audio" / "16kHz" / audio
    text_root = chime3_dir / "data" / "transcriptions"
    if not audio_root.is_dir() or not text_root.is_dir():
        raise FileNotFoundError(f"{chime3_dir}: expected CHiME-3's data/audio/16kHz/{audio}/ and "
                                f"data/transcriptions/ (the LDC release, LDC2017S24)")
    rows, report = [], PrepReport(split=split)
    for name in sets:
        wavs = sorted((audio_root / name).glob("*.wav"))
        if not wavs:
            raise FileNotFoundError(f"{audio_root / name}: no wav files (set {name})")
        for wav in wavs:
            report.rows += 1
            trn = text_root / name / f"{wav.stem}.trn"
            if not trn.is_file():
                report.skip("no transcription", str(trn))
                continue
            first = trn.read_text(encoding="utf-8", errors="replace").strip().split(maxsplit=1)
            text = first[1] if len(first) == 2 else ""
            if not text:
                report.skip("empty transcription", str(trn))
                continue
            rows.append(dict(id=wav.stem, audio=str(wav), text=text, voice=wav.stem.split("_")[0], domain=name,
                             split=split))
    report.kept = len(rows)
    return rows, report
