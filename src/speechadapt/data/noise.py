"""Noise for the target domain and for augmentation: white, pink, babble; machine hum for the
untuned shift only; SNR mixing.

Everything takes an explicit ``numpy.random.Generator`` so the target noise is the
same on every run for a seed. Signals are float arrays in [-1, 1].
"""

from typing import Sequence

import numpy as np

NOISE_TYPES = ("white", "pink", "babble", "hum")


def white_noise(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS Gaussian white noise."""
    return _unit_rms(rng.standard_normal(num_samples))


def pink_noise(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS 1/f noise: white noise shaped by 1/sqrt(f) in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    freqs = np.arange(spectrum.size, dtype=np.float64)
    freqs[0] = 1.0  # keep DC finite; it is removed below
    spectrum /= np.sqrt(freqs)
    spectrum[0] = 0.0
    return _unit_rms(np.fft.irfft(spectrum, n=num_samples))


def hum_noise(num_samples: int, rng: np.random.Generator, rate_hz: int = 16000) -> np.ndarray:
    """Unit-RMS machine hum: a random 90-180 Hz fundamental with 1/k harmonics up to 4 kHz,
    each slowly wobbling in level, over a floor of pink noise (a tonal, not broadband, shift)."""
    t = np.arange(num_samples) / rate_hz
    f0 = rng.uniform(90.0, 180.0)
    out = np.zeros(num_samples)
    for k in range(1, int(4000 // f0) + 1):
        wobble = 1.0 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.2, 2.0) * t + rng.uniform(0, 2 * np.pi))
        out += wobble * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k
    return _unit_rms(_unit_rms(out) + 0.3 * pink_noise(num_samples, rng))


def babble_noise(
    num_samples: int,
    talkers: Sequence[np.ndarray],
    num_talkers: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Unit-RMS sum of ``num_talkers`` utterances drawn from ``talkers``, each looped to
    ``num_samples`` from a random offset and normalised, so no talker dominates."""
    if len(talkers) == 0:
        raise ValueError("babble noise needs at least one talker utterance")
    out = np.zeros(num_samples)
    for idx in rng.choice(len(talkers), size=num_talkers, replace=len(talkers) < num_talkers):
        talker = np.asarray(talkers[idx], dtype=np.float64)
        start = int(rng.integers(0, talker.size))
        reps = int(np.ceil((num_samples + start) / talker.size))
        out += _unit_rms(np.tile(talker, reps)[start:start + num_samples])
    return _unit_rms(out)


def make_noise(kind: str, num_samples: int, rng: np.random.Generator,
               talkers: Sequence[np.ndarray] = (), num_talkers: int = 4) -> np.ndarray:
    """Dispatch on ``kind`` (one of :data:`NOISE_TYPES`)."""
    if kind == "white":
        return white_noise(num_samples, rng)
    if kind == "pink":
        return pink_noise(num_samples, rng)
    if kind == "babble":
        return babble_noise(num_samples, talkers, num_talkers, rng)
    if kind == "hum":
        return hum_noise(num_samples, rng)
    raise ValueError(f"unknown noise type {kind!r}; expected one of {NOISE_TYPES}")


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + noise scaled to ``snr_db`` (power over the whole utterance).

    The sum is scaled down as a whole if it would clip, which keeps the SNR.
    """
    if speech.shape != noise.shape:
        raise ValueError(f"speech {speech.shape} and noise {noise.shape} differ in shape")
    speech_power = float(np.mean(speech.astype(np.float64) ** 2))
    noise_power = float(np.mean(noise.astype(np.float64) ** 2))
    if speech_power == 0.0 or noise_power == 0.0:
        raise ValueError("cannot mix at an SNR when the speech or the noise is silent")
    gain = np.sqrt(speech_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    mixed = speech + gain * noise
    peak = float(np.max(np.abs(mixed)))
    return mixed * (0.99 / peak) if peak > 0.99 else mixed


def snr_db(speech: np.ndarray, noise: np.ndarray) -> float:
    """Measured SNR of a clean signal and the noise added to it."""
    return float(10.0 * np.log10(np.mean(speech ** 2) / np.mean(noise ** 2)))


def _unit_rms(x: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(x ** 2)))
    return x / rms if rms > 0 else x
