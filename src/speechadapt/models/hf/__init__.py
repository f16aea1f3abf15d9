"""Hugging Face models from local directories (Qwen2, Whisper, wav2vec2, HuBERT).

Loaders never reach a hub (``local_files_only=True``) and explain a missing model;
adapters give wav2vec2/HuBERT and Whisper the project's model interface
(:mod:`speechadapt.models.interface`). Tiny offline checkpoints live in
:mod:`speechadapt.models.hf.fixtures`. transformers is imported only when used.
"""

from speechadapt.models.hf.ctc_adapter import HFCtcAdapter
from speechadapt.models.hf.loading import (
    ModelDirError,
    check_model_dir,
    load_hf_ctc,
    load_qwen2,
    load_whisper,
    load_whisper_adapter,
    resolve_dtype,
)
from speechadapt.models.hf.seq2seq import WhisperAdapter
from speechadapt.models.hf.tokens import add_special_tokens, token_rows_distinct

__all__ = [
    "HFCtcAdapter",
    "ModelDirError",
    "WhisperAdapter",
    "add_special_tokens",
    "check_model_dir",
    "load_hf_ctc",
    "load_qwen2",
    "load_whisper",
    "load_whisper_adapter",
    "resolve_dtype",
    "token_rows_distinct",
]
