"""Miniature corpora in the real release layouts, spoken by espeak-ng (tests, ``--smoke``).

* :func:`write_mini_commonvoice`: ``cv-corpus-17.0-2024-03-15/<lang>/`` with
  ``{train,dev,test,validated}.tsv`` in the v17 columns, ``clip_durations.tsv`` and
  ``clips/common_voice_<lang>_<n>.mp3`` at 48 kHz (the recipes resample to 16 kHz);
  sentences with punctuation and an unbalanced quote, as the real TSVs hold.
* :func:`write_mini_tedlium`: ``TEDLIUM_release-3/legacy/{train,dev,test}/{sph,stm}``:
  each talk one NIST SPHERE file of several utterances with pauses and a noise burst,
  its STM lines in time order with ``<o,f0,male>``-style labels, TED-LIUM's tokenisation
  (``it 's``, ``<unk>``) and an ``ignore_time_segment_in_scoring`` line over the noise.
* :func:`write_mini_chime3`: two of CHiME-3's et05 sets (enhanced wavs + ``.trn`` files).

LibriSpeech's tree is written by ``egs/librispeech/local/make_mini_librispeech.py``.
"""

import hashlib
import random
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import soundfile as sf

from speechadapt.data.grammar import sample_sentence
from speechadapt.data.synth import synthesise_files

CV_RELEASE = "cv-corpus-17.0-2024-03-15"
HINDI = ("नमस्ते, आप कैसे हैं?", "आज मौसम बहुत अच्छा है।", "मुझे एक गिलास पानी चाहिए।", "दरवाज़ा खोल दो।",
         "कल सुबह सात बजे मिलेंगे।", "यह किताब बहुत पुरानी है।", "\"चलो बाज़ार चलते हैं।", "बत्ती बंद कर दो।",
         "मेरा नाम राम है।", "ट्रेन दस मिनट देर से है।", "हम शाम को खेलेंगे।", "बच्चे स्कूल जा रहे हैं।")
VOICES = {"hi": ("hi", "hi+m3", "hi+f2", "hi+f4"), "en": ("en-us", "en+m3", "en+f2", "en-gb-scotland")}
CV_SIZES = {"train": 8, "dev": 3, "test": 4}
TED_SIZES = {"train": (2, 4), "dev": (1, 3), "test": (2, 3)}  # talks, scored segments per talk
TED_CONTRACTIONS = ("it 's seven o'clock now", "they 're waiting at the door", "we 've got twelve minutes")


def _synthesise(items: List[Tuple[str, str, dict]], seed: int, num_jobs: int) -> Dict[str, np.ndarray]:
    """text items -> 16 kHz float waveforms (written to and read back from a temporary folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(str(Path(tmp) / f"{i:05d}.wav"), text, settings) for i, (_, text, settings) in enumerate(items)]
        synthesise_files([jobs], chunk_size=16, num_jobs=num_jobs, seed=seed)
        return {key: sf.read(path, dtype="float32")[0] for (key, _, _), (path, _, _) in zip(items, jobs)}


def _settings(rng: random.Random, voice: str) -> dict:
    return dict(voice=voice, rate=rng.randint(150, 185), pitch=rng.randint(35, 65), pitch_range=50)


def write_mini_commonvoice(out_dir: Path, lang: str = "hi", sizes: Dict[str, int] = None, seed: int = 0,
                           num_jobs: int = 1) -> Path:
    """The language folder of a miniature Common Voice release under ``out_dir``; returns it."""
    from scipy.signal import resample_poly

    rng = random.Random(seed)
    sizes = dict(CV_SIZES, **(sizes or {}))
    lang_dir = Path(out_dir) / CV_RELEASE / lang
    (lang_dir / "clips").mkdir(parents=True, exist_ok=True)
    voices = VOICES.get(lang, VOICES["en"])
    clients = [hashlib.sha512(f"speaker-{lang}-{k}".encode()).hexdigest() for k in range(len(voices))]
    texts = HINDI if lang == "hi" else tuple(sample_sentence(rng).capitalize() + "." for _ in range(24))
    rows, items, n = {}, [], 1000
    for split, count in sizes.items():
        rows[split] = []
        for i in range(count):
            n += 1
            k = rng.randrange(len(voices))
            sentence = texts[(n + i) % len(texts)]
            clip = f"common_voice_{lang}_{n}.mp3"
            speak = sentence.replace('"', "")
            items.append((clip, speak, _settings(rng, voices[k])))
            rows[split].append(dict(client_id=clients[k], path=clip, sentence_id=hashlib.sha256(
                sentence.encode()).hexdigest(), sentence=sentence, sentence_domain="", up_votes="2", down_votes="0",
                age=rng.choice(["twenties", "thirties", ""]), gender=rng.choice(["male_masculine", "female_feminine",
                                                                                 ""]),
                accents="", variant="", locale=lang, segment=""))
    durations = []
    for clip, samples in _synthesise(items, seed, num_jobs).items():
        audio48 = np.clip(resample_poly(samples, 3, 1), -1, 1)  # Common Voice's clips are 48 kHz mp3
        sf.write(lang_dir / "clips" / clip, audio48, 48000, format="MP3")
        durations.append((clip, int(round(1000 * len(samples) / 16000))))
    from speechadapt.data.corpora.commonvoice import TSV_COLUMNS

    def tsv(name: str, table: List[dict]) -> None:
        lines = ["\t".join(TSV_COLUMNS)] + ["\t".join(r[c] for c in TSV_COLUMNS) for r in table]
        (lang_dir / name).write_text("\n".join(lines) + "\n", encoding="utf-8")

    for split, table in rows.items():
        tsv(f"{split}.tsv", table)
    tsv("validated.tsv", [r for table in rows.values() for r in table])
    (lang_dir / "clip_durations.tsv").write_text("clip\tduration[ms]\n" + "".join(
        f"{clip}\t{ms}\n" for clip, ms in durations), encoding="utf-8")
    return lang_dir


def _ted_sentence(rng: random.Random, j: int) -> Tuple[str, str]:
    """(STM words in TED-LIUM's tokenisation, what the voice says)."""
    if j % 3 == 1:
        words = TED_CONTRACTIONS[j % len(TED_CONTRACTIONS)]
        return words, words.replace(" '", "'")
    sentence = sample_sentence(rng).lower()
    if j % 4 == 2:
        return sentence + " <unk>", sentence  # a word outside TED-LIUM's vocabulary
    return sentence, sentence


def write_mini_tedlium(out_dir: Path, sizes: Dict[str, Tuple[int, int]] = None, seed: int = 0,
                       num_jobs: int = 1) -> Path:
    """``out_dir/TEDLIUM_release-3`` with legacy/{train,dev,test}; returns the release folder."""
    rng = random.Random(seed)
    sizes = dict(TED_SIZES, **(sizes or {}))
    root = Path(out_dir) / "TEDLIUM_release-3"
    plan, items = [], []
    for split, (talks, segs) in sizes.items():
        for t in range(talks):
            talk = f"Speaker{split.capitalize()}{t}_20{10 + t}{'XPU'[t % 3]}"
            voice = VOICES["en"][(len(plan) + t) % len(VOICES["en"])]
            segments = []
            for j in range(segs):
                words, spoken = _ted_sentence(rng, j)
                key = f"{talk}-{j}"
                items.append((key, spoken, _settings(rng, voice)))
                segments.append((key, words))
            plan.append((split, talk, segments))
    audio = _synthesise(items, seed, num_jobs)
    noise_rng = np.random.default_rng(seed)
    for split, talk, segments in plan:
        pieces, lines, t = [np.zeros(8000, np.float32)], [], 0.5
        for j, (key, words) in enumerate(segments):
            wave = audio[key]
            lines.append(f"{talk} 1 {talk} {t:.2f} {t + len(wave) / 16000:.2f} <o,f0,male> {words}")
            pieces.append(wave)
            t += len(wave) / 16000
            if j == 0:  # applause: audio the STM marks as not scored
                burst = (0.05 * noise_rng.standard_normal(9600)).astype(np.float32)
                lines.append(f"{talk} 1 {talk} {t:.2f} {t + 0.6:.2f} <NA> ignore_time_segment_in_scoring")
                pieces.append(burst)
                t += 0.6
            gap = np.zeros(4800, np.float32)
            pieces.append(gap)
            t += 0.3
        for kind in ("sph", "stm"):
            (root / "legacy" / split / kind).mkdir(parents=True, exist_ok=True)
        sf.write(root / "legacy" / split / "sph" / f"{talk}.sph", np.concatenate(pieces), 16000, format="NIST",
                 subtype="PCM_16")
        (root / "legacy" / split / "stm" / f"{talk}.stm").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "README").write_text("A miniature TED-LIUM release 3 (legacy distribution) made by speechadapt.\n")
    return root


def write_mini_chime3(out_dir: Path, sets: Sequence[str] = ("et05_bus_real", "et05_caf_simu"), per_set: int = 2,
                      seed: int = 0, num_jobs: int = 1) -> Path:
    """``out_dir/CHiME3`` with enhanced wavs and .trn transcriptions of ``sets``; returns it."""
    rng = random.Random(seed)
    root = Path(out_dir) / "CHiME3"
    items = []
    for name in sets:
        env = name.split("_")[1].upper()
        for i in range(per_set):
            utt = f"F0{i + 1}_22GC01{i}{'AB'[i % 2]}_{env}"
            items.append(((name, utt), sample_sentence(rng), _settings(rng, VOICES["en"][i % 4])))
    noise_rng = np.random.default_rng(seed)
    for (name, utt), samples in _synthesise(items, seed, num_jobs).items():
        for sub in ("audio/16kHz/enhanced", "transcriptions"):
            (root / "data" / sub / name).mkdir(parents=True, exist_ok=True)
        noisy = np.clip(samples + 0.02 * noise_rng.standard_normal(samples.shape), -1, 1)
        sf.write(root / "data" / "audio" / "16kHz" / "enhanced" / name / f"{utt}.wav", noisy, 16000, subtype="PCM_16")
        text = next(t for (k, t, _) in items if k == (name, utt)).upper()
        (root / "data" / "transcriptions" / name / f"{utt}.trn").write_text(f"{utt} {text}\n", encoding="utf-8")
    return root
