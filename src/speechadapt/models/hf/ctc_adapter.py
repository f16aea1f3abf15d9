"""wav2vec2 / HuBERT CTC models behind the same interface as Zipformer-CTC.

``ctc_logits(x, x_lens) -> (logits (N,T,C), out_lens)``, ``forward`` -> log-probs,
``blank_id``, ``vocab_size``; the CTC loss, greedy decoding, ``compute_loss`` and
``transcribe`` come from :class:`speechadapt.models.ctc_base.CtcAsrMixin`. Here ``x``
is a padded 16 kHz waveform batch ``(N, S)`` (``input_kind = "waveform"``) rather than
fbank features; the per-utterance normalisation the feature extractor would apply is
done in torch, on the valid samples only, so padding does not shift the statistics.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from speechadapt.models.ctc_base import CtcAsrMixin

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm)


def lengths_to_mask(lens: torch.Tensor, max_len: int) -> torch.Tensor:
    """(N,) lengths -> (N, max_len) bool mask, True on valid positions."""
    return torch.arange(max_len, device=lens.device)[None, :] < lens[:, None]


class HFCtcAdapter(CtcAsrMixin, nn.Module):
    """Wraps a ``Wav2Vec2ForCTC`` / ``HubertForCTC`` and its ``Wav2Vec2Processor``."""

    input_kind = "waveform"

    def __init__(self, model: nn.Module, processor, model_dir: Optional[str] = None,
                 dtype: Optional[str] = None):
        super().__init__()
        self.model = model
        self.processor = processor
        self.model_dir = model_dir
        self.dtype_name = dtype
        self.method_name = f"{model.config.model_type}-ctc"
        prefix = f"model.{model.base_model_prefix}."
        self.group_prefixes = {"frontend": (prefix + "feature_extractor.", prefix + "feature_projection."),
                               "encoder": (prefix,), "decoder": ("model.lm_head.",)}
        self.tokenizer = processor.tokenizer
        feature_extractor = processor.feature_extractor
        self.sampling_rate = int(feature_extractor.sampling_rate)
        self.do_normalize = bool(feature_extractor.do_normalize)
        # Layer-norm front ends (HuBERT-large, wav2vec2-large-lv60) are trained with masks;
        # group-norm ones (wav2vec2-base) must see zero padding and no mask.
        self.use_attention_mask = bool(feature_extractor.return_attention_mask)
        self.blank_id = int(model.config.pad_token_id)
        self.vocab_size = int(model.config.vocab_size)
        self.word_delimiter = getattr(self.tokenizer, "word_delimiter_token", "|") or "|"

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _check(self, x: torch.Tensor, x_lens: torch.Tensor) -> None:
        if x.dim() != 2:
            raise ValueError(f"expected a padded waveform batch (N, S), got shape {tuple(x.shape)}")
        if x_lens.shape != (x.shape[0],):
            raise ValueError(f"x_lens must have shape ({x.shape[0]},), got {tuple(x_lens.shape)}")
        if int(x_lens.max()) > x.shape[1] or int(x_lens.min()) <= 0:
            raise ValueError(f"x_lens must lie in [1, {x.shape[1]}], got {x_lens.tolist()}")

    def normalise_audio(self, x: torch.Tensor, x_lens: torch.Tensor) -> torch.Tensor:
        """Zero-mean unit-variance per utterance over valid samples; padding set to 0."""
        mask = lengths_to_mask(x_lens.to(x.device), x.shape[1]).to(x.dtype)
        x = x * mask
        if not self.do_normalize:
            return x
        count = mask.sum(dim=1, keepdim=True)
        mean = x.sum(dim=1, keepdim=True) / count
        var = (((x - mean) * mask) ** 2).sum(dim=1, keepdim=True) / count
        return (x - mean) / torch.sqrt(var + 1e-7) * mask

    def output_lengths(self, x_lens: torch.Tensor) -> torch.Tensor:
        """Frames the convolutional front end makes from ``x_lens`` samples."""
        return self.model._get_feat_extract_output_lengths(x_lens).long()

    @property
    def min_input_length(self) -> int:
        """Samples the convolutional front end needs for one output frame (its receptive field)."""
        length = 1
        for kernel, stride in reversed(list(zip(self.model.config.conv_kernel, self.model.config.conv_stride))):
            length = (length - 1) * stride + kernel
        return length

    def ctc_logits(self, x: torch.Tensor, x_lens: torch.Tensor,
                   cache: Optional[dict] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Padded waveforms (N, S) at 16 kHz -> (logits (N, T, C), out_lens (N,)). ``cache``
        is accepted for the interface and unused: the front end is trainable in SUTA."""
        audio, mask, x_lens = self._model_inputs(x, x_lens)
        logits = self.model(input_values=audio, attention_mask=mask).logits
        out_lens = self.output_lengths(x_lens).clamp(max=logits.shape[1])
        return logits, out_lens

    def _model_inputs(self, x: torch.Tensor, x_lens: torch.Tensor):
        self._check(x, x_lens)
        x_lens = x_lens.to(self.device)
        audio = self.normalise_audio(x.to(self.device, torch.float32), x_lens).to(self.dtype)
        mask = lengths_to_mask(x_lens, audio.shape[1]).long() if self.use_attention_mask else None
        return audio, mask, x_lens

    def encode(self, x: torch.Tensor, x_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(encoder output (N, T, D), the one the CTC head reads; valid lengths): the speaker
        probe's features."""
        audio, mask, x_lens = self._model_inputs(x, x_lens)
        hidden = self.model.base_model(input_values=audio, attention_mask=mask).last_hidden_state
        return hidden, self.output_lengths(x_lens).clamp(max=hidden.shape[1])

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits, out_lens = self.ctc_logits(x, x_lens)
        return logits.float().log_softmax(dim=-1), out_lens

    def decode_text(self, ids: Sequence[int]) -> str:
        """Collapsed token ids -> words (``|`` separates words; special tokens dropped)."""
        special = set(self.tokenizer.all_special_ids) - {self.tokenizer.convert_tokens_to_ids(self.word_delimiter)}
        tokens = self.tokenizer.convert_ids_to_tokens([i for i in ids if i not in special])
        text = "".join(" " if t == self.word_delimiter else t for t in tokens)
        return " ".join(text.split())

    def encode_text(self, text: str) -> List[int]:
        """Transcript -> label ids (upper-cased characters, ``|`` between words)."""
        return list(self.tokenizer(" ".join(text.upper().split()))["input_ids"])

    def encode_texts(self, texts: Sequence[str]) -> List[List[int]]:
        ids = [[i for i in self.encode_text(t) if i != self.blank_id] for t in texts]
        empty = [t for t, i in zip(texts, ids) if not i]
        if empty:
            raise ValueError(f"{len(empty)} transcripts encode to no characters, e.g. {empty[:2]!r}")
        return ids

    def decode_ids(self, ids: Sequence[int]) -> str:
        return self.decode_text(ids)

    def unknown_characters(self, text: str) -> set:
        vocab = self.tokenizer.get_vocab()
        return {c for c in set(text.upper()) - {" "} if c not in vocab}

    def spec(self) -> Dict[str, Any]:
        return {"kind": "hf_ctc", "model_dir": self.model_dir, "dtype": self.dtype_name}

    def norm_and_extractor_parameters(self, include_extractor: bool = True) -> List[Tuple[str, nn.Parameter]]:
        """SUTA's default trainable set: LayerNorm/GroupNorm weights (+ conv front end and projection).

        Names are as in ``self.named_parameters()`` (prefixed ``model.``).
        """
        chosen = {}
        for name, module in self.named_modules():
            if isinstance(module, _NORM_TYPES):
                chosen.update({f"{name}.{p}": param for p, param in module.named_parameters(recurse=False)})
        if include_extractor:
            base = self.model.base_model
            prefix = f"model.{self.model.base_model_prefix}"
            for part in ("feature_extractor", "feature_projection"):
                chosen.update({f"{prefix}.{part}.{n}": p for n, p in getattr(base, part).named_parameters()})
        order = [n for n, _ in self.named_parameters()]
        return [(n, chosen[n]) for n in order if n in chosen]
