"""The model interface every ASR model of the project offers.

``ZipformerCtc``, ``LlmAsrModel`` (and MoSE), ``HFCtcAdapter`` (wav2vec2 / HuBERT)
and ``WhisperAdapter`` all implement it, so the Trainer, the decoder, ``transcribe``
and the adaptation methods treat them alike:

* ``input_kind``: "fbank" or "waveform", what the datamodule feeds it;
* ``compute_loss(batch) -> (loss, info)``: the training loss of a SpeechBatch,
  *summed* over the batch, and a MetricsTracker whose "frames" entry is the
  normaliser (frames or tokens) and "loss" the summed loss as a float;
* ``transcribe(batch, options) -> [text]``: one hypothesis per utterance;
* ``parameter_groups() -> {name: [(param name, parameter)]}``: the named groups an
  adaptation method can pick (``all``, ``norms``, ``lora``, ``frontend`` (the
  convolutional front end), ``encoder``, ``decoder``, ``projector``; a model lists
  those it has);
* ``spec() -> dict``: what :mod:`speechadapt.models.registry` rebuilds the model
  from (kind, configuration, the files it reads); written into the experiment
  directory by every trainer;
* ``load_weights(state_dict)``: load checkpoint weights (all of them, or the
  trainable subset a LoRA checkpoint holds);
* ``unknown_characters(text) -> set``: characters the model cannot spell (byte-level
  tokenizers: none).

:class:`SpeechModelMixin` gives the generic parts.
"""

import logging
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Sequence, Tuple

import math

import torch
from torch import nn

from speechadapt.decoding.text_norm import TEXT_NORMS, make_normalizer

NamedParams = List[Tuple[str, nn.Parameter]]
GROUP_NAMES = ("all", "norms", "lora", "frontend", "encoder", "decoder", "projector")


@dataclass
class DecodeOptions:
    """How to turn a batch into text (CTC models know only greedy search)."""

    decoding_method: str = field(default="greedy", metadata={"choices": ("greedy", "beam")})
    beam_size: int = field(default=4, metadata={"help": "beam search only"})
    max_new_tokens: int = field(default=64, metadata={"help": "generative models (LLM-ASR, Whisper)"})
    ctc_weight: float = field(default=0.0, metadata={
        "help": "LLM-ASR on CTC-compressed encoders: > 0 rescores the beam's hypotheses and each encoder's CTC "
                "greedy transcript by (1 - w) log P_LLM + w log P_CTC (joint CTC/LLM decoding); 0: the LLM alone"})
    length_bonus: float = field(default=0.0, metadata={
        "help": "with --ctc-weight > 0: added to a candidate's score per word (summed log-likelihoods favour "
                "short transcripts)"})
    text_norm: str = field(default="default", metadata={
        "choices": TEXT_NORMS, "help": "how refs and hyps are normalised before scoring: default, whisper "
                                       "(Whisper's own, for the model's language), none (whitespace split)"})

    def __post_init__(self):
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"--ctc-weight must be in [0, 1], got {self.ctc_weight}")
        if self.length_bonus and not self.ctc_weight:
            raise ValueError(f"--length-bonus {self.length_bonus} acts in joint CTC/LLM rescoring only "
                             f"(--ctc-weight > 0)")

    @property
    def num_beams(self) -> int:
        return 1 if self.decoding_method == "greedy" else self.beam_size

    def key(self, weights_name: str) -> str:
        """icefall's file-name key: ``greedy-epoch-8-avg-3``, ``beam4-...``."""
        search = self.decoding_method if self.num_beams == 1 else f"beam{self.num_beams}"
        if self.ctc_weight > 0:
            search += f"-ctc{self.ctc_weight:g}" + (f"-lb{self.length_bonus:g}" if self.length_bonus else "")
        norm = "" if self.text_norm == "default" else f"-norm-{self.text_norm}"
        return f"{search}-{weights_name}{norm}"

    def normalizer(self, model=None):
        """text -> scored words (Whisper's normaliser follows the model's language)."""
        return make_normalizer(self.text_norm, getattr(model, "language", None))


def loss_metrics(loss: torch.Tensor, frames: float, utterances: int, **more: float):
    """The tracker ``compute_loss`` returns: the summed loss, its normaliser ("frames":
    output frames or label tokens), the utterance count and any extra sums."""
    from speechadapt.training.metrics import MetricsTracker

    info = MetricsTracker(unnormalised=["utterances"])
    info["frames"] = float(frames)
    info["utterances"] = float(utterances)
    info["loss"] = _number(loss)
    for key, value in more.items():
        info[key] = _number(value)
    return info


def _number(value) -> float:
    """float(value); NaN for a tensor batched under ``torch.func.vmap`` (ZO's batched
    queries keep only the losses, and a batched value has no single number)."""
    if isinstance(value, torch.Tensor):
        if torch._C._functorch.is_batchedtensor(value):
            return math.nan
        return float(value.detach())
    return float(value)


def is_norm_module(module: nn.Module) -> bool:
    """LayerNorm, GroupNorm, BatchNorm*, RMSNorm-likes and the Zipformer's BiasNorm."""
    return "Norm" in type(module).__name__


def norm_parameters(model: nn.Module) -> NamedParams:
    """Parameters owned directly by normalisation modules, in named_parameters order."""
    wanted = set()
    for module_name, module in model.named_modules():
        if is_norm_module(module):
            prefix = f"{module_name}." if module_name else ""
            wanted.update(prefix + name for name, _ in module.named_parameters(recurse=False))
    return [(n, p) for n, p in model.named_parameters() if n in wanted]


def by_prefix(model: nn.Module, prefixes: Iterable[str]) -> NamedParams:
    prefixes = tuple(prefixes)
    return [(n, p) for n, p in model.named_parameters() if n.startswith(prefixes)]


class SpeechModelMixin:
    """Generic parts of the interface; a model sets ``input_kind`` and
    ``group_prefixes`` ({"encoder": ("encoder.",), ...}) and writes the rest."""

    input_kind: str = "fbank"
    group_prefixes: Dict[str, Sequence[str]] = {}

    def parameter_groups(self) -> Dict[str, NamedParams]:
        groups: Dict[str, NamedParams] = {"all": list(self.named_parameters())}  # type: ignore[attr-defined]
        norms = norm_parameters(self)  # type: ignore[arg-type]
        if norms:
            groups["norms"] = norms
        lora = [(n, p) for n, p in groups["all"] if "lora_" in n]
        if lora:
            groups["lora"] = lora
        for name, prefixes in self.group_prefixes.items():
            chosen = by_prefix(self, prefixes)  # type: ignore[arg-type]
            if chosen:
                groups[name] = chosen
        return groups

    def load_weights(self, state: Dict[str, torch.Tensor]) -> None:
        """All weights (strict), or a subset of them (a trainable-only file): every key
        of the file must exist in the model with the same shape."""
        from speechadapt.training.checkpoint import load_model_state

        own = set(self.state_dict())  # type: ignore[attr-defined]
        partial = set(state) != own
        load_model_state(self, state, strict=True, partial=partial)  # type: ignore[arg-type]
        if partial:
            logging.info(f"{type(self).__name__}: loaded {len(state)} of {len(own)} entries "
                         f"(the rest from the model's base files)")

    def unknown_characters(self, text: str) -> set:
        """Characters of ``text`` outside the model's vocabulary (none for byte-level BPE)."""
        return set()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device  # type: ignore[attr-defined]
