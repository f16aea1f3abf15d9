"""Load Hugging Face checkpoints from local directories, never from a hub.

Each loader checks the directory first, so a missing or half-copied model gives one
message that lists the files expected and the public model to fetch elsewhere,
instead of a hub lookup that fails deep inside ``from_pretrained``.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

PathLike = Union[str, Path]
DTypeLike = Union[None, str, torch.dtype]

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


class ModelDirError(FileNotFoundError):
    """A model directory is missing or lacks files a checkpoint needs."""


@dataclass(frozen=True)
class ModelDirSpec:
    """What a checkpoint directory of one model family must hold.

    ``file_groups`` is a list of alternatives: each group is satisfied when every
    file of at least one of its options exists (e.g. tokenizer.json, or
    vocab.json + merges.txt).
    """

    family: str
    public_model: str
    flag: str
    file_groups: Tuple[Tuple[Tuple[str, ...], ...], ...]


_TOKENIZER_BPE = (("tokenizer.json",), ("vocab.json", "merges.txt"))
_FEATURE_EXTRACTOR = (("preprocessor_config.json",), ("processor_config.json",))

SPECS: Dict[str, ModelDirSpec] = {
    "qwen2": ModelDirSpec(
        "Qwen2 causal LM", "Qwen/Qwen2-1.5B-Instruct", "--llm-dir",
        ((("tokenizer_config.json",),), _TOKENIZER_BPE),
    ),
    "whisper": ModelDirSpec(
        "Whisper", "openai/whisper-large-v3", "--whisper-dir",
        ((("tokenizer_config.json",),), _TOKENIZER_BPE, _FEATURE_EXTRACTOR),
    ),
    "wav2vec2": ModelDirSpec(
        "wav2vec2 CTC", "facebook/wav2vec2-base-960h", "--model-dir",
        ((("vocab.json",),), _FEATURE_EXTRACTOR),
    ),
    "hubert": ModelDirSpec(
        "HuBERT CTC", "facebook/hubert-large-ls960-ft", "--model-dir",
        ((("vocab.json",),), _FEATURE_EXTRACTOR),
    ),
}


def resolve_dtype(dtype: DTypeLike) -> Optional[torch.dtype]:
    """``None`` (keep the checkpoint's dtype), a ``torch.dtype`` or a name like 'bf16'."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().replace("torch.", "")
    if key not in _DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPE_NAMES)}")
    return _DTYPE_NAMES[key]


def _weight_problems(model_dir: Path) -> List[str]:
    """Missing weight files: a single file, or an index whose shards all exist."""
    if any((model_dir / name).is_file() for name in WEIGHT_FILES):
        return []
    for index_name in WEIGHT_INDEX_FILES:
        index = model_dir / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [f"{shard} (listed in {index_name})" for shard in shards if not (model_dir / shard).is_file()]
    return [" or ".join(WEIGHT_FILES + WEIGHT_INDEX_FILES)]


def _group_problem(model_dir: Path, options: Sequence[Tuple[str, ...]]) -> Optional[str]:
    if any(all((model_dir / f).is_file() for f in option) for option in options):
        return None
    return " or ".join(" + ".join(option) for option in options)


def expected_files(spec: ModelDirSpec) -> List[str]:
    """Human-readable list of what the directory must contain."""
    groups = [" or ".join(" + ".join(o) for o in group) for group in spec.file_groups]
    weights = f"weights ({' or '.join(WEIGHT_FILES)}, or a sharded {' / '.join(WEIGHT_INDEX_FILES)} with its shards)"
    return ["config.json", weights] + groups


def model_dir_message(model_dir: PathLike, kind: str, missing: Sequence[str]) -> str:
    spec = SPECS[kind]
    what = "does not exist" if not Path(model_dir).is_dir() else "is incomplete, missing: " + "; ".join(missing)
    return (
        f"{spec.family} model directory '{model_dir}' {what}.\n"
        f"Expected files: {'; '.join(expected_files(spec))}.\n"
        f"Nothing is downloaded at run time. On a machine with network, fetch the public model "
        f"'{spec.public_model}' (e.g. `hf download {spec.public_model} --local-dir {model_dir}`, "
        f"or git clone https://huggingface.co/{spec.public_model}), copy the directory here and pass "
        f"it with {spec.flag}."
    )


def missing_files(model_dir: PathLike, kind: str) -> List[str]:
    """What a ``kind`` checkpoint in ``model_dir`` lacks (empty when complete)."""
    if kind not in SPECS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(SPECS)}")
    path = Path(model_dir)
    missing = [] if (path / "config.json").is_file() else ["config.json"]
    missing += _weight_problems(path)
    missing += [p for g in SPECS[kind].file_groups if (p := _group_problem(path, g)) is not None]
    return missing


def check_model_dir(model_dir: PathLike, kind: str) -> Path:
    """Raise :class:`ModelDirError` unless ``model_dir`` holds a complete ``kind`` checkpoint."""
    missing = missing_files(model_dir, kind)
    if not Path(model_dir).is_dir() or missing:
        raise ModelDirError(model_dir_message(model_dir, kind, missing))
    return Path(model_dir)


def read_model_type(model_dir: PathLike) -> Optional[str]:
    """``model_type`` from config.json, or None when there is no readable config."""
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("model_type")


def _place(model: torch.nn.Module, device: Union[str, torch.device]) -> torch.nn.Module:
    return model.to(torch.device(device)).eval()


def _dtype_kwargs(dtype: DTypeLike) -> dict:
    kwargs = {}
    resolved = resolve_dtype(dtype)
    if resolved is not None:
        kwargs["dtype"] = resolved
    return kwargs


def load_qwen2(llm_dir: PathLike, device: Union[str, torch.device] = "cpu", dtype: DTypeLike = None):
    """``(model, tokenizer)`` of a Qwen2 causal LM; ``dtype=None`` keeps the checkpoint's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = check_model_dir(llm_dir, "qwen2")
    model_type = read_model_type(path)
    if model_type != "qwen2":
        logging.warning("%s holds model_type %r, not 'qwen2'; loading it as a causal LM", path, model_type)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        # Qwen2 pads with <|endoftext|>; other tokenizers fall back to their eos.
        pad = "<|endoftext|>" if "<|endoftext|>" in tokenizer.get_vocab() else tokenizer.eos_token
        tokenizer.pad_token = pad
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **_dtype_kwargs(dtype))
    return _place(model, device), tokenizer


def load_whisper(whisper_dir: PathLike, device: Union[str, torch.device] = "cpu", dtype: DTypeLike = None):
    """``(WhisperForConditionalGeneration, WhisperProcessor)`` from a local directory."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    path = check_model_dir(whisper_dir, "whisper")
    processor = WhisperProcessor.from_pretrained(path, local_files_only=True)
    model = WhisperForConditionalGeneration.from_pretrained(path, local_files_only=True, **_dtype_kwargs(dtype))
    return _place(model, device), processor


def ctc_kind(model_dir: PathLike) -> str:
    """'wav2vec2' or 'hubert', from the directory's config.json."""
    model_type = read_model_type(model_dir)
    if model_type in ("wav2vec2", "hubert"):
        return model_type
    if model_type is None:
        # No config to tell which family: name both public models.
        raise ModelDirError(
            model_dir_message(model_dir, "wav2vec2", missing_files(model_dir, "wav2vec2"))
            + f"\n(For HuBERT the public model is '{SPECS['hubert'].public_model}'.)"
        )
    raise ValueError(f"{model_dir}: model_type {model_type!r} is not a wav2vec2 or HuBERT CTC model")


def load_hf_ctc(model_dir: PathLike, device: Union[str, torch.device] = "cpu", dtype: DTypeLike = None):
    """A wav2vec2 / HuBERT CTC checkpoint wrapped as an :class:`HFCtcAdapter`."""
    from transformers import AutoModelForCTC, Wav2Vec2Processor

    from speechadapt.models.hf.ctc_adapter import HFCtcAdapter

    path = check_model_dir(model_dir, ctc_kind(model_dir))
    processor = Wav2Vec2Processor.from_pretrained(path, local_files_only=True)
    model = AutoModelForCTC.from_pretrained(path, local_files_only=True, **_dtype_kwargs(dtype))
    return HFCtcAdapter(_place(model, device), processor, model_dir=str(path),
                        dtype=None if dtype is None else str(dtype))


def load_whisper_adapter(
    whisper_dir: PathLike,
    device: Union[str, torch.device] = "cpu",
    dtype: DTypeLike = None,
    language: Optional[str] = "en",
    task: str = "transcribe",
):
    """:func:`load_whisper` wrapped as a :class:`WhisperAdapter`."""
    from speechadapt.models.hf.seq2seq import WhisperAdapter

    model, processor = load_whisper(whisper_dir, device, dtype)
    return WhisperAdapter(model, processor, language=language, task=task, model_dir=str(whisper_dir),
                          dtype=None if dtype is None else str(dtype))
