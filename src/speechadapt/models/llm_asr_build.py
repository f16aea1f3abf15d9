"""Build an LLM-ASR model from files: encoder checkpoints, an LLM directory, options.

``LlmAsrOptions`` are the flags of ``train --model llm_asr`` (the model config plus the
files it reads); ``build_llm_asr_model(options)`` loads everything, and the model's
spec records the files with their fingerprints, so decoding rebuilds exactly the
model that was trained, or says which file changed.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

from torch import nn

from speechadapt.models.llm_asr import LlmAsrConfig, LlmAsrModel
from speechadapt.models.llm_asr_prompt import SPEECH_TOKENS
from speechadapt.utils.config import config_from_dict

PathLike = Union[str, Path]
_ENCODER_PREFIXES = ("encoder_embed.", "encoder.")


@dataclass
class LlmAsrOptions(LlmAsrConfig):
    llm_dir: str = field(default="", metadata={"required": True, "help": "local Hugging Face Qwen2 directory"})
    encoder_ckpt: List[str] = field(default_factory=list, metadata={
        "required": True, "help": "Zipformer-CTC checkpoint(s) (epoch-E-avg-A.pt), comma-separated; several = MoSE"})
    encoder_preset: List[str] = field(default_factory=lambda: ["tiny"], metadata={
        "help": "Zipformer preset per --encoder-ckpt (one value applies to all)"})
    encoder_pad_invariant: bool = field(default=True, metadata={
        "help": "encoder output of an utterance independent of batch padding"})
    llm_dtype: Optional[str] = field(default=None, metadata={"help": "e.g. bf16 on GPU; default: the checkpoint's"})
    encoder_compress: str = field(default="none", metadata={
        "choices": ("none", "ctc", "ctc-tokens"),
        "help": "ctc: shorten each encoder's output with its checkpoint's CTC head (blank frames dropped, runs of "
                "one label averaged: about one vector per BPE piece; use with --stack-k 1); ctc-tokens: also pass "
                "each run's CTC posterior through a matrix that starts at the LLM embeddings of the pieces' text "
                "(the BPE model named by the checkpoint folder's model.json)"})

    def model_config(self) -> LlmAsrConfig:
        names = LlmAsrConfig.__dataclass_fields__
        return config_from_dict(LlmAsrConfig, {k: v for k, v in vars(self).items() if k in names})


def missing_encoder_message(missing: List[str]) -> str:
    return (f"--encoder-ckpt file(s) not found: {', '.join(missing) or '(none given)'} (a Zipformer trained "
            f"here, e.g. exp/ctc/epoch-E-avg-A.pt, or icefall's published exp/pretrained.pt of a Zipformer "
            f"model: the recipe's README says which and where)")


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


def load_frozen_encoder(path: PathLike, preset: str = "tiny", device="cpu", pad_invariant: bool = True,
                        compress: str = "none") -> nn.Module:
    """A ZipformerEncoder with the ``encoder_embed.*``/``encoder.*`` weights of a
    Zipformer-CTC (or icefall) checkpoint, loaded strictly, frozen and in eval mode;
    with ``compress="ctc"`` wrapped with the checkpoint's CTC head (``ctc_output.1.*``).

    ``pad_invariant`` (same weights) makes an utterance's features independent of the
    batch it is padded into, so batched decoding equals one-by-one decoding.
    """
    from speechadapt.models.ctc_compress import CtcCompressedEncoder
    from speechadapt.models.zipformer import ZipformerEncoder, get_preset

    if compress not in ("none", "ctc", "ctc-tokens"):
        raise ValueError(f"--encoder-compress must be none, ctc or ctc-tokens, got {compress!r}")
    state = _checkpoint_state(path)
    encoder = ZipformerEncoder(get_preset(preset, pad_invariant=pad_invariant))
    wanted = {k: v for k, v in state.items() if k.startswith(_ENCODER_PREFIXES)}
    try:
        encoder.load_state_dict(wanted, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit the Zipformer preset '{preset}' (--encoder-preset): {e}") from None
    if compress != "none":
        head = {k[len("ctc_output.1."):]: v for k, v in state.items() if k.startswith("ctc_output.1.")}
        if set(head) != {"weight", "bias"}:
            raise KeyError(f"{path} has no CTC head (ctc_output.1.weight/bias): --encoder-compress ctc needs a "
                           f"Zipformer-CTC checkpoint (icefall's transducer-only checkpoints have none)")
        linear = nn.Linear(head["weight"].shape[1], head["weight"].shape[0])
        linear.load_state_dict(head)
        pieces = ctc_piece_texts(path, linear.out_features) if compress == "ctc-tokens" else None
        encoder = CtcCompressedEncoder(encoder, linear, piece_texts=pieces)
        encoder.bpe_model = ctc_bpe_model(path)
    for p in encoder.parameters():
        p.requires_grad_(False)
    logging.info(f"loaded frozen Zipformer encoder ({preset}) from {path}")
    return encoder.to(device).eval()


def ctc_bpe_model(ckpt: PathLike, required: bool = False) -> Optional[str]:
    """The BPE model that the ``model.json`` beside a Zipformer-CTC checkpoint names (None,
    unless ``required``, when there is none: icefall's published checkpoints come without)."""
    import json

    spec_path = Path(ckpt).resolve().parent / "model.json"
    try:
        bpe_model = json.loads(spec_path.read_text())["bpe_model"]
    except (OSError, ValueError, KeyError) as e:
        if not required:
            return None
        raise FileNotFoundError(f"--encoder-compress ctc-tokens reads the BPE model from {spec_path} "
                                f"(the Zipformer-CTC training folder's model.json): {e}") from None
    if not Path(bpe_model).is_file():
        if not required:
            return None
        raise FileNotFoundError(f"{spec_path} names the BPE model {bpe_model}, which is missing")
    return str(bpe_model)


def ctc_piece_texts(ckpt: PathLike, vocab_size: int) -> List[str]:
    """The text of each CTC label of a Zipformer-CTC checkpoint, from the BPE model that
    the ``model.json`` beside it names."""
    import sentencepiece as spm

    from speechadapt.models.ctc_compress import piece_text

    bpe_model = ctc_bpe_model(ckpt, required=True)
    sp = spm.SentencePieceProcessor(model_file=str(bpe_model))
    if sp.get_piece_size() != vocab_size:
        raise ValueError(f"{bpe_model} has {sp.get_piece_size()} pieces, the CTC head of {ckpt} {vocab_size}")
    return [piece_text(sp.id_to_piece(i)) for i in range(vocab_size)]


def build_llm_asr_model(options: LlmAsrOptions, device="cpu") -> LlmAsrModel:
    """The model the entry points train and decode (LLM checked first: it is the
    usual missing piece)."""
    from speechadapt.models.hf.loading import check_model_dir

    if not options.encoder_ckpt:
        raise ValueError("give at least one --encoder-ckpt")
    presets = list(options.encoder_preset)
    if len(presets) == 1:
        presets = presets * len(options.encoder_ckpt)
    if len(presets) != len(options.encoder_ckpt):
        raise ValueError(f"{len(options.encoder_ckpt)} --encoder-ckpt files but {len(presets)} --encoder-preset values")
    llm_dir = check_model_dir(options.llm_dir, "qwen2").resolve()
    missing = [str(p) for p in options.encoder_ckpt if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(missing_encoder_message(missing))
    ckpts = [Path(p).resolve() for p in options.encoder_ckpt]
    llm, tokenizer = load_llm_for_asr(llm_dir, device=device, dtype=options.llm_dtype)
    encoders = [load_frozen_encoder(p, preset, device, options.encoder_pad_invariant, options.encoder_compress)
                for p, preset in zip(ckpts, presets)]
    sources = dict(llm_dir=str(llm_dir), encoder_ckpt=[str(p) for p in ckpts], encoder_preset=presets,
                   encoder_pad_invariant=options.encoder_pad_invariant, llm_dtype=options.llm_dtype,
                   encoder_compress=options.encoder_compress,
                   fingerprints=source_fingerprints(llm_dir, ckpts))
    model = LlmAsrModel(encoders, llm, tokenizer, options.model_config(), sources=sources).to(device)
    logging.info(f"LLM-ASR with {len(encoders)} encoder(s): {model.num_trainable()} trainable parameters")
    return model


def source_fingerprints(llm_dir: Path, encoder_ckpts: List[Path]) -> dict:
    """Fingerprints of the frozen parts' files (the LLM weights and config, the encoders)."""
    from speechadapt.models.hf.loading import WEIGHT_FILES, WEIGHT_INDEX_FILES
    from speechadapt.utils.io import file_fingerprint

    names = ("config.json",) + WEIGHT_FILES + WEIGHT_INDEX_FILES
    files = [llm_dir / n for n in names if (llm_dir / n).is_file()] + list(encoder_ckpts)
    return {str(f): file_fingerprint(f) for f in files}


def rebuild_llm_asr_model(spec: dict, device="cpu") -> LlmAsrModel:
    """The model a spec describes; a frozen part whose file changed since training is
    an error (the trainable weights would be applied to another model)."""
    from speechadapt.utils.io import file_fingerprint

    changed = [f for f, stamp in (spec.get("fingerprints") or {}).items()
               if not Path(f).is_file() or file_fingerprint(f) != stamp]
    if changed:
        raise ValueError(f"the LLM-ASR model was trained on other versions of {changed}: these files are "
                         f"missing or changed since (retrained?); retrain the LLM-ASR stage, or restore them")
    # A spec from before the projector norm existed describes a projector without one.
    # A spec from before CTC compression existed has none.
    options = config_from_dict(LlmAsrOptions, {"projector_norm": False, **spec["config"], **{k: spec[k] for k in (
        "llm_dir", "encoder_ckpt", "encoder_preset", "encoder_pad_invariant", "llm_dtype")},
        "encoder_compress": spec.get("encoder_compress", "none")})
    return build_llm_asr_model(options, device)
