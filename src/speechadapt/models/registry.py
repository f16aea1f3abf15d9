"""The one model registry: every model kind, its flags, and how it is (re)built.

A kind is a name (``train --model NAME``), a dataclass of options (its flags), a
builder for training (base weights from the files the options name, ``--init-from``)
and a rebuilder from the spec the model writes (``model.spec()``). Trainers write the
spec to ``exp_dir/model.json``; decoders, ``transcribe`` and the adaptation methods
call :func:`load_model` with the experiment directory alone.

Adding a model kind: give the model the interface of :mod:`speechadapt.models.interface`
and add one :class:`ModelKind` entry here.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from speechadapt.utils.io import atomic_write_text

SPEC_FILE = "model.json"


# ---- options (the flags of each kind) ----------------------------------------------

@dataclass
class ZipformerCtcOptions:
    lang_dir: str = field(default="", metadata={"required": True,
                                                "help": "icefall-style lang_bpe_N directory with bpe.model"})
    encoder_preset: str = field(default="tiny", metadata={"help": "tiny, small, medium or large"})
    pad_invariant: bool = field(default=True, metadata={
        "help": "mask padding in the front end and downsampling, so a batched utterance decodes as it "
                "would alone (icefall's own model does not)"})
    regularize: bool = field(default=True, metadata={
        "help": "false: no scheduled dropout / layer skipping / feature masking in training and no "
                "warm-up floor on the bypass scales (short runs: see bench/ctc_convergence.py)"})
    schedule_updates: float = field(default=0.0, metadata={
        "help": "expected number of updates; > 0 rescales the Zipformer regularisation schedules "
                "to end within it (0: icefall's batch counts)"})
    init_from: str = field(default="", metadata={"help": "icefall pretrained.pt / epoch-N.pt to start from"})


@dataclass
class HfCtcOptions:
    model_dir: str = field(default="", metadata={"required": True,
                                                 "help": "local wav2vec2 / HuBERT CTC directory"})
    dtype: Optional[str] = field(default=None, metadata={"help": "e.g. bf16; default: the checkpoint's"})


@dataclass
class WhisperOptions:
    model_dir: str = field(default="", metadata={"required": True, "help": "local Whisper directory"})
    dtype: Optional[str] = field(default=None, metadata={"help": "e.g. bf16; default: the checkpoint's"})
    language: str = "en"
    task: str = field(default="transcribe", metadata={"choices": ("transcribe", "translate")})


# ---- builders ----------------------------------------------------------------------

# icefall's Zipformer schedules mostly end by ~20k batches.
ICEFALL_SCHEDULE_BATCHES = 20000.0


def _build_zipformer_ctc(options: ZipformerCtcOptions, device):
    from speechadapt.models.ctc import ZipformerCtc
    from speechadapt.models.ctc_base import BpeTokenizer
    from speechadapt.models.zipformer import get_preset, load_icefall_checkpoint

    tokenizer = BpeTokenizer.from_lang_dir(Path(options.lang_dir).resolve())
    overrides: Dict[str, Any] = {"pad_invariant": options.pad_invariant, "regularize": options.regularize}
    if options.schedule_updates > 0:
        overrides["schedule_scale"] = ICEFALL_SCHEDULE_BATCHES / options.schedule_updates
    model = ZipformerCtc(get_preset(options.encoder_preset, **overrides), tokenizer.vocab_size, tokenizer=tokenizer)
    if options.init_from:
        load_icefall_checkpoint(options.init_from, model)
        logging.info(f"initialised from {options.init_from}")
    return model.to(device)


def _rebuild_zipformer_ctc(spec: Dict[str, Any], device):
    from speechadapt.models.ctc import ZipformerCtc
    from speechadapt.models.ctc_base import BpeTokenizer

    tokenizer = BpeTokenizer(spec["bpe_model"])
    return ZipformerCtc(spec["encoder_config"], spec["vocab_size"], spec["blank_id"], tokenizer).to(device)


def _build_llm_asr(options, device):
    from speechadapt.models.llm_asr_build import build_llm_asr_model

    return build_llm_asr_model(options, device)


def _rebuild_llm_asr(spec: Dict[str, Any], device):
    from speechadapt.models.llm_asr_build import rebuild_llm_asr_model

    return rebuild_llm_asr_model(spec, device)


def _build_hf_ctc(options: HfCtcOptions, device):
    from speechadapt.models.hf.loading import load_hf_ctc

    return load_hf_ctc(Path(options.model_dir).resolve(), device=device, dtype=options.dtype)


def _rebuild_hf_ctc(spec: Dict[str, Any], device):
    return _build_hf_ctc(HfCtcOptions(model_dir=spec["model_dir"], dtype=spec.get("dtype")), device)


def _build_whisper(options: WhisperOptions, device):
    from speechadapt.models.hf.loading import load_whisper_adapter

    return load_whisper_adapter(Path(options.model_dir).resolve(), device=device, dtype=options.dtype,
                                language=options.language, task=options.task)


def _rebuild_whisper(spec: Dict[str, Any], device):
    return _build_whisper(WhisperOptions(model_dir=spec["model_dir"], dtype=spec.get("dtype"),
                                         language=spec["language"], task=spec["task"]), device)


def _check_zipformer_ctc(options: ZipformerCtcOptions) -> None:
    bpe = Path(options.lang_dir) / "bpe.model"
    if not bpe.is_file():
        raise FileNotFoundError(f"--lang-dir: {bpe} does not exist (run the recipe's BPE stage first)")
    if options.init_from and not Path(options.init_from).is_file():
        raise FileNotFoundError(f"--init-from {options.init_from}: no such file")


def _check_llm_asr(options) -> None:
    from speechadapt.models.hf.loading import check_model_dir
    from speechadapt.models.llm_asr_build import missing_encoder_message

    check_model_dir(options.llm_dir, "qwen2")
    missing = [str(p) for p in options.encoder_ckpt if not Path(p).is_file()]
    if missing or not options.encoder_ckpt:
        raise FileNotFoundError(missing_encoder_message(missing))


def _check_hf_dir(kind: str):
    def check(options) -> None:
        from speechadapt.models.hf.loading import check_model_dir, ctc_kind

        check_model_dir(options.model_dir, ctc_kind(options.model_dir) if kind == "ctc" else kind)

    return check


def _llm_asr_options():
    from speechadapt.models.llm_asr_build import LlmAsrOptions

    return LlmAsrOptions


@dataclass(frozen=True)
class ModelKind:
    name: str
    options: Callable[[], type]  # the options dataclass (a function: imports stay lazy)
    build: Callable[[Any, Any], torch.nn.Module]
    rebuild: Callable[[Dict[str, Any], Any], torch.nn.Module]
    # Cheap checks of the options' files before any process is spawned.
    check: Callable[[Any], None]
    # Training defaults that suit the kind (command line and --config still win).
    training_defaults: Dict[str, Any] = field(default_factory=dict)
    help: str = ""


# Fine-tuning a pre-trained model: AdamW at a small rate, clipped; LoRA / adapter
# checkpoints hold only what trains.
_FINE_TUNE = dict(optimizer="adamw", base_lr=1e-5, scheduler="constant", max_grad_norm=1.0)

MODEL_KINDS: Dict[str, ModelKind] = {
    "zipformer_ctc": ModelKind(
        "zipformer_ctc", lambda: ZipformerCtcOptions, _build_zipformer_ctc, _rebuild_zipformer_ctc,
        _check_zipformer_ctc,
        # the Zipformer skips modules at random in training: DDP must allow unused ones
        dict(find_unused_parameters=True),
        "icefall Zipformer encoder + CTC head on fbank (ScaledAdam + Eden by default)"),
    "llm_asr": ModelKind(
        "llm_asr", _llm_asr_options, _build_llm_asr, _rebuild_llm_asr, _check_llm_asr,
        # No SpecAugment by default: the frozen encoder never saw masked input, so masking
        # only corrupts what the LLM is taught to read (synth: its CTC WER 13.4% -> 69.5%).
        dict(optimizer="adamw", base_lr=1e-4, scheduler="eden", warmup_batches=100.0,
             save_trainable_only=True, max_grad_norm=5.0, enable_spec_aug=False),
        "frozen Zipformer encoder(s) + projector(s) + Qwen2 with LoRA; several encoders = MoSE"),
    "hf_ctc": ModelKind(
        "hf_ctc", lambda: HfCtcOptions, _build_hf_ctc, _rebuild_hf_ctc, _check_hf_dir("ctc"), dict(_FINE_TUNE),
        "wav2vec2 / HuBERT CTC from a local Hugging Face directory (waveform input)"),
    "whisper": ModelKind(
        "whisper", lambda: WhisperOptions, _build_whisper, _rebuild_whisper, _check_hf_dir("whisper"),
        dict(_FINE_TUNE),
        "Whisper from a local Hugging Face directory (waveform input)"),
}


def get_kind(name: str) -> ModelKind:
    if name not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {name!r}; choose from {sorted(MODEL_KINDS)}")
    return MODEL_KINDS[name]


# ---- specs in the experiment directory ----------------------------------------------

def write_spec(exp_dir, spec: Dict[str, Any]) -> Path:
    if spec.get("kind") not in MODEL_KINDS:
        raise ValueError(f"a model spec needs a known 'kind', got {spec.get('kind')!r}")
    return atomic_write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n", Path(exp_dir) / SPEC_FILE)


def check_same_model(exp_dir, spec: Dict[str, Any]) -> None:
    """Resuming a run with another model (kind, size, files) would load mismatched weights."""
    path = Path(exp_dir) / SPEC_FILE
    if not path.is_file():
        return
    saved = read_spec(exp_dir)
    if saved != json.loads(json.dumps(spec)):
        keys = sorted(k for k in set(saved) | set(spec) if saved.get(k) != json.loads(json.dumps(spec.get(k))))
        raise ValueError(f"{path} describes another model than this command builds (differing: {keys}); resume "
                         f"with the flags of that run, or start a fresh run elsewhere")


def read_spec(exp_dir) -> Dict[str, Any]:
    path = Path(exp_dir) / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: --exp-dir must be a directory written by "
                                f"speechadapt.bin.train (or another trainer of this project)")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    get_kind(spec.get("kind"))
    return spec


def model_from_spec(spec: Dict[str, Any], device="cpu") -> torch.nn.Module:
    """The model a spec describes, with its base weights (random for a model trained
    from scratch): load a checkpoint into it with ``model.load_weights``."""
    return get_kind(spec["kind"]).rebuild(spec, device)


def load_model(exp_dir, selection=None, device="cpu") -> Tuple[torch.nn.Module, str]:
    """(model in eval mode, weights name) from an experiment directory alone: the spec
    in ``model.json`` and the checkpoint(s) chosen by ``selection``
    (:class:`speechadapt.training.averaging.WeightSelection`)."""
    from speechadapt.training.averaging import WeightSelection, select_weights

    model = model_from_spec(read_spec(exp_dir), device)
    state, name, files = select_weights(exp_dir, selection or WeightSelection())
    try:
        model.load_weights(state)
    except (KeyError, ValueError) as e:
        raise type(e)(f"{', '.join(map(str, files))} does not fit the model of {Path(exp_dir) / SPEC_FILE}: "
                      f"{e}") from None
    logging.info(f"{type(model).__name__} from {exp_dir} with {name} ({len(files)} file(s))")
    return model.eval(), name
