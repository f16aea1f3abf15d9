"""espeak-ng through ctypes, from the ``espeakng-loader`` wheel (no root, no download).

espeak is a process-global C library with hidden state that carries from one
utterance to the next (its noise generators and wave phase: the same text gives a
few samples more or less depending on what was said before, and neither
``espeak_ng_SetRandSeed`` nor re-initialising resets it). What *is* reproducible is
a fresh process replaying the same call sequence. So: never use it from threads,
never load it in the parent process, and synthesise fixed chunks of utterances, each
in a fresh worker process (see ``synth.py``).
"""

import ctypes
import logging
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
from scipy.signal import resample_poly

ESPEAK_RATE_HZ = 22050
TARGET_RATE_HZ = 16000

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_EE_OK = 0

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _EspeakVoice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


class UnknownVoiceError(ValueError):
    """espeak has no such voice (it would silently keep the previous one)."""


@dataclass(frozen=True)
class VoiceSettings:
    """One synthesis setting: voice name (``lang[+variant]``), rate (wpm), pitch, range (0-100)."""

    voice: str
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50


class EspeakSynthesizer:
    """Synchronous espeak-ng: text -> int16 samples at 16 kHz.

    Create at most one per process, and only in a worker process (module docstring).
    """

    def __init__(self, rand_seed: int = 0):
        import espeakng_loader  # only where synthesis really happens

        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_GetCurrentVoice.restype = ctypes.POINTER(_EspeakVoice)
        data_path = espeakng_loader.get_data_path().encode()
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0)
        if rate != ESPEAK_RATE_HZ:
            raise RuntimeError(f"espeak_Initialize returned {rate}, expected {ESPEAK_RATE_HZ} Hz")
        self._chunks: List[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # keep a reference: C holds it
        self._lib.espeak_SetSynthCallback(self._callback)
        self._voice: Optional[str] = None
        self.seed_random(rand_seed)

    def seed_random(self, seed: int) -> None:
        """Seed espeak's own noise generator and libc ``rand()`` (klatt voices use it);
        both are otherwise seeded from the clock."""
        self._lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
        ctypes.CDLL(None).srand(ctypes.c_uint(seed & 0xFFFFFFFF))

    def _collect(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
        return 0  # 0 = go on synthesising

    def set_voice(self, name: str) -> None:
        """Select ``name``; raise :class:`UnknownVoiceError` if espeak does not have it.

        espeak returns an error for an unknown language but accepts an unknown
        ``+variant`` silently, so the variant is checked in the selected identifier.
        """
        if name == self._voice:
            return
        status = self._lib.espeak_SetVoiceByName(name.encode())
        identifier = self._lib.espeak_GetCurrentVoice().contents.identifier or b""
        identifier = identifier.decode().lower()
        variant = name.split("+", 1)[1].lower() if "+" in name else None
        if status != _EE_OK or (variant and not identifier.endswith("+" + variant)):
            self._voice = None
            raise UnknownVoiceError(
                f"espeak-ng has no voice {name!r} (status {status}, selected {identifier!r}); "
                "use 'lang' or 'lang+variant' names such as 'en-us', 'en+m3', 'en-gb-scotland'"
            )
        self._voice = name

    def synthesize(self, text: str, settings: VoiceSettings) -> np.ndarray:
        """int16 samples at 16 kHz for ``text`` spoken with ``settings``."""
        self.set_voice(settings.voice)
        for param, value in ((_PARAM_RATE, settings.rate), (_PARAM_PITCH, settings.pitch),
                             (_PARAM_RANGE, settings.pitch_range)):
            self._lib.espeak_SetParameter(param, int(value), 0)
        self._chunks = []
        data = text.encode("utf-8")
        status = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0,
                                        _CHARS_UTF8, None, None)
        if status != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed with status {status} on {text!r}")
        if not self._chunks:
            raise RuntimeError(f"espeak produced no audio for {text!r}")
        return resample_to_16k(np.concatenate(self._chunks), ESPEAK_RATE_HZ)


def resample_to_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """int16 (or float in [-1, 1]) samples at ``rate`` -> int16 at 16 kHz."""
    x = samples.astype(np.float64)
    if np.issubdtype(samples.dtype, np.integer):
        x /= 32768.0
    if rate != TARGET_RATE_HZ:
        g = np.gcd(int(rate), TARGET_RATE_HZ)
        x = resample_poly(x, TARGET_RATE_HZ // g, int(rate) // g)
    return to_int16(x)


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] -> int16, clipping (and logging) overflow."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 1.0:
        logging.debug("clipping samples with peak %.3f", peak)
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def check_voices(names: List[str]) -> List[str]:
    """Verify every name (call in a worker process); return them or raise UnknownVoiceError."""
    synth = EspeakSynthesizer()
    bad = []
    for name in names:
        try:
            synth.set_voice(name)
        except UnknownVoiceError:
            bad.append(name)
    if bad:
        raise UnknownVoiceError(f"unknown espeak-ng voice(s): {', '.join(bad)}")
    return list(names)


def write_utterances(synthesize, items) -> list:
    """Write ``(wav path, text, settings)`` items with ``synthesize(text, settings)`` (int16 at
    16 kHz) as 16-bit wav; returns ``[(path, num_samples)]``. The body of every synthesis
    worker (espeak here, Piper in ``piper.py``)."""
    import soundfile as sf

    done = []
    for path, text, settings in items:
        samples = synthesize(text, settings)
        sf.write(path, samples, TARGET_RATE_HZ, subtype="PCM_16")
        done.append((path, int(samples.size)))
    return done

