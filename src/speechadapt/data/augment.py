"""Domain augmentation of training cuts, reproducible per (seed, epoch, cut id).

The augmentations, in the order they are applied to a cut:

* **speed perturbation**: lhotse's ``perturb_speed`` (resampling: pitch and tempo
  change together, the duration by 1/factor);
* **tempo change**: :func:`change_tempo`, WSOLA (waveform-similarity overlap-add):
  the duration changes by 1/factor and the pitch stays. Ours because lhotse's
  ``Tempo`` calls sox through torchaudio, which this project does not have; it is
  attached to the cut as :class:`WsolaTempo`, a lhotse ``AudioTransform``, so it runs
  lazily when the audio is loaded (in the DataLoader worker);
* **reverberation**: lhotse's ``reverb_rir`` with a room impulse response from
  :func:`synthetic_rir` (written to disk by ``local/make_rirs.py``). Ours because
  lhotse's RIR-less reverb draws its room with torchaudio; with a given RIR lhotse
  convolves by itself, shifts by the direct path and keeps the length and power;
* **additive noise**: a noise cut (looped over several noise cuts when short, a random
  stretch when long) mixed at an SNR drawn from a range (lhotse ``cut.mix``).

SpecAugment (on the fbank, in the dataset) is configured in the datamodule.

Every random choice of a cut (whether an augmentation applies, which factor, RIR,
noise cut, offset and SNR) comes from a generator seeded by :func:`stable_seed` of
(seed, epoch, cut id, augmentation name), so it does not depend on which batches came
before, on the worker or on any global RNG: a run resumed mid-epoch from the sampler
state sees the same audio. :class:`CutAugmenter` runs as a lhotse sampler ``map`` in the
process that iterates the sampler, where ``sampler.epoch`` is always current; it only
edits manifests (cheap), and the audio work happens when the worker loads the audio.
"""

import hashlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from lhotse import CutSet, Recording, RecordingSet
from lhotse.augmentation.torchaudio import Tempo
from lhotse.cut import MixedCut
from lhotse.utils import fastcopy, perturb_num_samples

# A noise stretch shorter than this is not mixed in (as lhotse's CutMix: a piece with
# no feature frame breaks feature-domain mixing).
MIN_NOISE_SECONDS = 0.05
# amplitude factor of -60 dB: exp(-LN_1000 * t / rt60) reaches it at t = rt60
LN_1000 = float(np.log(1000.0))


def stable_seed(*parts) -> int:
    """A 64-bit seed from the parts' text: the same in every process and run (Python's
    ``hash`` of a str is salted per process)."""
    data = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


# ---- tempo ---------------------------------------------------------------------------


def change_tempo(samples: np.ndarray, factor: float, sample_rate: int, frame_seconds: float = 0.03,
                 search_seconds: float = 0.01) -> np.ndarray:
    """Tempo change by WSOLA: the duration becomes 1/factor (factor > 1 is faster and
    shorter), the pitch stays. ``samples`` is (N,) or (channels, N); the output has
    ``round(N / factor)`` samples per channel.

    Hann frames of ``frame_seconds`` are laid down every half frame in the output; each
    is read from the input near ``factor`` times its output position, shifted by up to
    ``search_seconds`` to the stretch most like the natural continuation of the
    previous frame, so the waveform runs on without phase jumps.
    """
    x = np.asarray(samples)
    if not factor > 0:
        raise ValueError(f"tempo factor must be > 0, got {factor}")
    if x.ndim == 2:
        return np.stack([change_tempo(ch, factor, sample_rate, frame_seconds, search_seconds) for ch in x])
    if x.ndim != 1:
        raise ValueError(f"samples must be (N,) or (channels, N), got shape {x.shape}")
    out_len = int(round(x.size / factor))
    if factor == 1.0 or x.size == 0:
        return x.copy()
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
    win = max(2 * int(round(frame_seconds * sample_rate / 2)), 4)
    hop, half = win // 2, win // 2
    tol = max(int(round(search_seconds * sample_rate)), 1)
    # periodic Hann at 50% overlap sums to exactly 1: no normalisation needed
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    analysis_hop = hop * factor
    num_frames = out_len // hop + 2
    # padded index p holds input time p - half - tol; frame k starts near k*Ha + tol
    need = int(np.ceil((num_frames - 1) * analysis_hop)) + 2 * tol + win + hop + 1
    front = half + tol
    xp = np.zeros(max(need, front + x.size), dtype=np.float64)
    xp[front:front + x.size] = x
    out = np.zeros(num_frames * hop + win, dtype=np.float64)
    prev = None
    for k in range(num_frames):
        nominal = int(round(k * analysis_hop)) + tol
        if prev is None:
            pos = nominal
        else:
            template = xp[prev + hop:prev + hop + win]
            region = xp[nominal - tol:nominal + tol + win]
            corr = np.correlate(region, template, mode="valid")
            energy = np.cumsum(np.concatenate(([0.0], region * region)))
            corr = corr / np.sqrt(energy[win:] - energy[:-win] + 1e-12)
            pos = nominal - tol + int(np.argmax(corr))
        out[k * hop:k * hop + win] += window * xp[pos:pos + win]
        prev = pos
    return out[half:half + out_len].astype(dtype)


@dataclass
class WsolaTempo(Tempo):
    """lhotse's ``Tempo`` (same metadata and timestamp handling) computed by
    :func:`change_tempo` instead of sox/torchaudio. Registered with lhotse by name, so
    manifests holding it load wherever this module is imported."""

    def __call__(self, samples: np.ndarray, sampling_rate: int) -> np.ndarray:
        out = change_tempo(samples, self.factor, int(sampling_rate))
        # exactly the length lhotse's metadata promises (its rounding, not ours)
        want = perturb_num_samples(samples.shape[-1], self.factor)
        if out.shape[-1] < want:
            out = np.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, want - out.shape[-1])])
        return out[..., :want].astype(samples.dtype, copy=False)


def with_wsola_tempo(cut):
    """The cut with every lhotse ``Tempo`` in its recordings' transforms replaced by
    :class:`WsolaTempo` (lhotse's ``perturb_tempo`` does the metadata, ours the audio)."""
    if isinstance(cut, MixedCut):
        return fastcopy(cut, tracks=[fastcopy(t, cut=with_wsola_tempo(t.cut)) for t in cut.tracks])
    recording = getattr(cut, "recording", None)
    if recording is None or not recording.transforms:
        return cut
    transforms = [WsolaTempo(factor=t.factor) if type(t) is Tempo else t for t in recording.transforms]
    return fastcopy(cut, recording=fastcopy(recording, transforms=transforms))


def tempo_cut(cut, factor: float):
    """``cut`` at ``factor`` times the tempo, pitch kept, id kept."""
    return with_wsola_tempo(cut.perturb_tempo(factor, affix_id=False))


# ---- room impulse responses ----------------------------------------------------------


def _draw(rng: np.random.Generator, value) -> float:
    """A float, or uniform in a (low, high) range."""
    if isinstance(value, (tuple, list)):
        return float(rng.uniform(value[0], value[1])) if len(value) == 2 else float(value[0])
    return float(value)


def synthetic_rir(rng: np.random.Generator, sample_rate: int = 16000, rt60=(0.2, 0.8),
                  drr_db=(0.0, 10.0), max_seconds: float = 1.0, num_reflections=(4, 12)) -> np.ndarray:
    """A mono room impulse response: a direct path (sample 0, the largest sample), a
    few early reflections in the first 50 ms and a Gaussian late tail whose amplitude
    falls 60 dB in ``rt60`` seconds, scaled so the direct-to-reverberant energy ratio
    is ``drr_db``. ``rt60``/``drr_db`` are values or (low, high) ranges drawn from
    ``rng``. Normalised to unit energy, so convolving keeps the power of white input.
    Length: ``min(rt60, max_seconds)`` (the tail is then down 60 dB or cut)."""
    rt = _draw(rng, rt60)
    if rt <= 0:
        raise ValueError(f"rt60 must be > 0, got {rt}")
    n = max(int(np.ceil(min(rt, max_seconds) * sample_rate)), 2)
    t = np.arange(n) / sample_rate
    envelope = np.exp(-LN_1000 * t / rt)
    # the reverberant field starts after the first reflection (2-10 ms)
    onset = min(int(rng.uniform(0.002, 0.01) * sample_rate), n - 1)
    tail = rng.standard_normal(n) * envelope
    tail[:max(onset, 1)] = 0.0
    early_end = max(min(int(0.05 * sample_rate), n - 1), onset + 1)
    count = int(rng.integers(num_reflections[0], num_reflections[1] + 1))
    at = rng.integers(max(onset, 1), early_end, size=count)
    np.add.at(tail, at, rng.choice([-1.0, 1.0], size=count) * rng.uniform(0.5, 3.0, size=count) * envelope[at])
    drr = _draw(rng, drr_db)
    tail *= np.sqrt(1.0 / (np.sum(tail ** 2) * 10.0 ** (drr / 10.0)))
    # lhotse aligns the output on the largest sample: keep that the direct path
    tail = np.clip(tail, -0.9, 0.9)
    rir = tail
    rir[0] = 1.0
    return (rir / np.sqrt(np.sum(rir ** 2))).astype(np.float32)


def load_rirs(path) -> List[Recording]:
    """The RIR recordings of a RecordingSet manifest (``local/make_rirs.py``)."""
    from speechadapt.data.manifests import open_manifest

    try:
        manifest = open_manifest(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--rir-recordings: {e} (make one with local/make_rirs.py)") from None
    if not isinstance(manifest, RecordingSet):
        raise ValueError(f"--rir-recordings {path}: expected a lhotse RecordingSet, got {type(manifest).__name__}")
    rirs = list(manifest)
    if not rirs:
        raise ValueError(f"--rir-recordings {path} holds no recordings")
    return rirs


# ---- the per-cut augmenter -----------------------------------------------------------


class CutAugmenter:
    """CutSet -> CutSet for a lhotse sampler's ``map``: each cut speed-perturbed,
    tempo-changed, reverberated and noise-mixed with the given probabilities, ids kept.
    The randomness of a cut is a function of (seed, epoch, cut id) only; the epoch is
    read from the bound sampler (:meth:`bind`) or set with :meth:`set_epoch`."""

    def __init__(self, seed: int, speed_factors: Sequence[float] = (), speed_prob: float = 0.0,
                 tempo_factors: Sequence[float] = (), tempo_prob: float = 0.0,
                 rirs: Sequence[Recording] = (), reverb_prob: float = 0.0,
                 noise_cuts: Sequence = (), noise_prob: float = 0.0,
                 noise_snr: Tuple[float, ...] = (10.0, 20.0)):
        self.seed = seed
        self.speed_factors, self.speed_prob = tuple(speed_factors), speed_prob
        self.tempo_factors, self.tempo_prob = tuple(tempo_factors), tempo_prob
        self.rirs, self.reverb_prob = list(rirs), reverb_prob
        self.noise_cuts = [c for c in noise_cuts if c.duration > 0]
        if noise_prob > 0 and noise_cuts and not self.noise_cuts:
            raise ValueError("noise mixing: every noise cut has zero duration")
        self.noise_prob, self.noise_snr = noise_prob, tuple(noise_snr)
        self._sampler = None
        self._epoch = 0
        self._rirs_at_rate: Dict[Tuple[int, int], Recording] = {}

    @property
    def changes_audio(self) -> bool:
        """Speed, tempo or reverberation on: the audio itself changes."""
        return bool((self.speed_factors and self.speed_prob > 0) or (self.tempo_factors and self.tempo_prob > 0)
                    or (self.rirs and self.reverb_prob > 0))

    @property
    def enabled(self) -> bool:
        return self.changes_audio or bool(self.noise_cuts and self.noise_prob > 0)

    def bind(self, sampler) -> "CutAugmenter":
        """Read the epoch from ``sampler.epoch`` (set by ``set_epoch`` and restored by
        ``load_state_dict``), at the moment each batch is drawn."""
        self._sampler = sampler
        return self

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    @property
    def epoch(self) -> int:
        return int(self._sampler.epoch) if self._sampler is not None else self._epoch

    def __call__(self, cuts: CutSet) -> CutSet:
        epoch = self.epoch
        return CutSet.from_cuts([self.augment(c, epoch) for c in cuts])

    def rng(self, epoch: int, cut_id: str, what: str) -> np.random.Generator:
        """One augmentation's generator for one cut in one epoch."""
        return np.random.default_rng(stable_seed(self.seed, epoch, cut_id, what))

    def _choice(self, options: Sequence, prob: float, epoch: int, cut_id: str, what: str):
        if not options or prob <= 0:
            return None
        rng = self.rng(epoch, cut_id, what)
        if rng.random() >= prob:
            return None
        return options[int(rng.integers(len(options)))]

    def augment(self, cut, epoch: int):
        """The augmented copy of one cut (the cut itself when nothing applies)."""
        speed = self._choice(self.speed_factors, self.speed_prob, epoch, cut.id, "speed")
        tempo = self._choice(self.tempo_factors, self.tempo_prob, epoch, cut.id, "tempo")
        rir = self._choice(self.rirs, self.reverb_prob, epoch, cut.id, "reverb")
        speed = None if speed == 1.0 else speed
        tempo = None if tempo == 1.0 else tempo
        if speed is not None or tempo is not None or rir is not None:
            if not cut.has_recording:
                raise ValueError(f"cut {cut.id} has no recording: speed, tempo and reverberation need the audio")
            # a copy without features: lhotse would otherwise detach them from the
            # original cut in place, with a warning per cut
            cut = cut.drop_features()
            if speed is not None:
                cut = cut.perturb_speed(speed, affix_id=False)
            if tempo is not None:
                cut = tempo_cut(cut, tempo)
            if rir is not None:
                cut = cut.reverb_rir(rir_recording=self._rir_at(rir, cut.sampling_rate), normalize_output=True,
                                     affix_id=False)
        if self.noise_cuts and self.noise_prob > 0:
            rng = self.rng(epoch, cut.id, "noise")
            if rng.random() < self.noise_prob:
                cut = self._mix_noise(cut, rng)
        return cut

    def _rir_at(self, rir: Recording, rate: int) -> Recording:
        if rir.sampling_rate == rate:
            return rir
        key = (id(rir), rate)
        if key not in self._rirs_at_rate:  # a lazy lhotse resample, not the samples
            self._rirs_at_rate[key] = rir.resample(rate)
        return self._rirs_at_rate[key]

    def _mix_noise(self, cut, rng: np.random.Generator):
        """Noise under the whole cut at one SNR: a random stretch of a longer noise cut,
        or several noise cuts one after another; the cut keeps its id and duration."""
        snr = _draw(rng, self.noise_snr)
        target = float(cut.duration)
        mixed, covered = cut, 0.0
        while covered == 0.0 or covered < target - MIN_NOISE_SECONDS:
            noise = self.noise_cuts[int(rng.integers(len(self.noise_cuts)))]
            need = round(target - covered, 8)
            if noise.duration > need:
                noise = noise.truncate(offset=float(rng.uniform(0.0, noise.duration - need)), duration=need,
                                       preserve_id=True)  # not a random uuid
            mixed = mixed.mix(noise, offset_other_by=covered, snr=snr, preserve_id="left")
            covered = round(covered + float(noise.duration), 8)
        return mixed.truncate(duration=target, preserve_id=True) if mixed.duration > target else mixed


def augmenter_summary(augmenter: Optional[CutAugmenter]) -> str:
    """One log line: what is on."""
    if augmenter is None or not augmenter.enabled:
        return "no cut augmentation"
    parts = []
    if augmenter.speed_factors and augmenter.speed_prob > 0:
        parts.append(f"speed {list(augmenter.speed_factors)} p={augmenter.speed_prob}")
    if augmenter.tempo_factors and augmenter.tempo_prob > 0:
        parts.append(f"tempo {list(augmenter.tempo_factors)} p={augmenter.tempo_prob}")
    if augmenter.rirs and augmenter.reverb_prob > 0:
        parts.append(f"reverb {len(augmenter.rirs)} RIRs p={augmenter.reverb_prob}")
    if augmenter.noise_cuts and augmenter.noise_prob > 0:
        parts.append(f"noise {len(augmenter.noise_cuts)} cuts p={augmenter.noise_prob} snr={list(augmenter.noise_snr)}")
    return "cut augmentation: " + ", ".join(parts)
