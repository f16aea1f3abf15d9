"""Build an LLM-ASR model from files: encoder checkpoints, an LLM directory, flags.

Shared by the training and decoding entry points so both see the same model:
``add_llm_asr_arguments(parser)``, ``llm_asr_config_from_args(args)`` and
``build_llm_asr_model(...)``.
"""

import argparse
import logging
from pathlib import Path
from typing import Sequence, Union

from torch import nn

from speechadapt.models.llm_asr import LORA_TARGETS, LlmAsrConfig, LlmAsrModel
from speechadapt.models.llm_asr_prompt import SPEECH_TOKENS
from speechadapt.utils.args import str2bool

PathLike = Union[str, Path]
_ENCODER_PREFIXES = ("encoder_embed.", "encoder.")


def load_llm_for_asr(llm_dir: PathLike, device="cpu", dtype=None):
    """(llm, tokenizer) from a local Hugging Face directory, speech tokens added.

    A missing or incomplete directory raises ModelDirError with what to download.
    """
    from speechadapt.models.hf.loading import load_qwen2
    from speechadapt.models.hf.tokens import add_special_tokens

    llm, tokenizer = load_qwen2(llm_dir, device=device, dtype=dtype)
    add_special_tokens(llm, tokenizer, SPEECH_TOKENS)
    return llm, tokenizer


def _checkpoint_state(path: PathLike) -> dict:
    from speechadapt.utils.safe_load import safe_torch_load

    obj = safe_torch_load(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, got {type(obj).__name__}")
    state = obj.get("model", obj)
    if not isinstance(state, dict) or not any(k.startswith(_ENCODER_PREFIXES) for k in state):
        raise KeyError(
            f"{path}: no Zipformer encoder weights (keys starting with {_ENCODER_PREFIXES}); "
            f"expected a Zipformer-CTC checkpoint such as exp/epoch-E-avg-A.pt or icefall's pretrained.pt"
        )
    return state


def load_frozen_encoder(path: PathLike, preset: str = "tiny", device="cpu", pad_invariant: bool = True) -> nn.Module:
    """A ZipformerEncoder with the ``encoder_embed.*``/``encoder.*`` weights of a
    Zipformer-CTC (or icefall) checkpoint, loaded strictly, frozen and in eval mode.

    ``pad_invariant`` (same weights) makes an utterance's features independent of the
    batch it is padded into, so batched decoding equals one-by-one decoding.
    """
    from speechadapt.models.zipformer import ZipformerEncoder, get_preset

    state = _checkpoint_state(path)
    encoder = ZipformerEncoder(get_preset(preset, pad_invariant=pad_invariant))
    wanted = {k: v for k, v in state.items() if k.startswith(_ENCODER_PREFIXES)}
    try:
        encoder.load_state_dict(wanted, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit the Zipformer preset '{preset}' (--encoder-preset): {e}") from None
    for p in encoder.parameters():
        p.requires_grad_(False)
    logging.info(f"loaded frozen Zipformer encoder ({preset}) from {path}")
    return encoder.to(device).eval()


def build_llm_asr_model(
    llm_dir: PathLike,
    encoder_ckpts: Sequence[PathLike],
    encoder_presets: Sequence[str],
    config: LlmAsrConfig,
    device="cpu",
    dtype=None,
    pad_invariant: bool = True,
) -> LlmAsrModel:
    """The model the entry points train and decode (LLM checked first: it is the
    usual missing piece)."""
    if not encoder_ckpts:
        raise ValueError("give at least one --encoder-ckpt")
    presets = list(encoder_presets)
    if len(presets) == 1:
        presets = presets * len(encoder_ckpts)
    if len(presets) != len(encoder_ckpts):
        raise ValueError(f"{len(encoder_ckpts)} --encoder-ckpt files but {len(presets)} --encoder-preset values")
    llm, tokenizer = load_llm_for_asr(llm_dir, device=device, dtype=dtype)
    encoders = [load_frozen_encoder(p, preset, device, pad_invariant) for p, preset in zip(encoder_ckpts, presets)]
    model = LlmAsrModel(encoders, llm, tokenizer, config).to(device)
    logging.info(f"LLM-ASR with {len(encoders)} encoder(s): {model.num_trainable()} trainable parameters")
    return model


def add_llm_asr_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = LlmAsrConfig()
    g = parser.add_argument_group("LLM-ASR model")
    g.add_argument("--llm-dir", type=Path, required=True, help="local Hugging Face Qwen2 directory")
    g.add_argument("--encoder-ckpt", type=Path, nargs="+", required=True,
                   help="Zipformer-CTC checkpoint(s) (epoch-E-avg-A.pt); several = MoSE")
    g.add_argument("--encoder-preset", nargs="+", default=["tiny"],
                   help="Zipformer preset per --encoder-ckpt (one value applies to all)")
    g.add_argument("--encoder-pad-invariant", type=str2bool, default=True,
                   help="encoder output of an utterance independent of batch padding")
    g.add_argument("--stack-k", type=int, default=d.stack_k, help="encoder frames stacked per LLM embedding")
    g.add_argument("--projector-dropout", type=float, default=d.projector_dropout)
    g.add_argument("--use-lora", type=str2bool, default=d.use_lora, help="false: the LLM stays frozen")
    g.add_argument("--lora-r", type=int, default=d.lora_r)
    g.add_argument("--lora-alpha", type=int, default=d.lora_alpha)
    g.add_argument("--lora-dropout", type=float, default=d.lora_dropout)
    g.add_argument("--lora-targets", type=lambda s: tuple(t for t in s.split(",") if t),
                   default=LORA_TARGETS, help="comma-separated module names")
    g.add_argument("--train-special-tokens", type=str2bool, default=d.train_special_tokens,
                   help="train the <start_speech>/<end_speech> embedding rows")
    g.add_argument("--mose-slot-dropout", type=float, default=d.mose_slot_dropout,
                   help="MoSE: drop each encoder's slot with this probability in training")
    g.add_argument("--llm-dtype", default=None, help="e.g. bf16 on GPU; default: the checkpoint's")
    return parser


def llm_asr_config_from_args(args: argparse.Namespace) -> LlmAsrConfig:
    return LlmAsrConfig(
        stack_k=args.stack_k,
        projector_dropout=args.projector_dropout,
        use_lora=args.use_lora,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        lora_targets=tuple(args.lora_targets),
        train_special_tokens=args.train_special_tokens,
        mose_slot_dropout=args.mose_slot_dropout,
    )
