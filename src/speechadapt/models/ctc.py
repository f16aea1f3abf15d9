"""Zipformer-CTC: icefall's Zipformer encoder with its ``ctc_output`` head.

state_dict keys are exactly icefall's ``encoder_embed.*``, ``encoder.*`` and
``ctc_output.1.*``, so icefall CTC checkpoints load strictly
(``speechadapt.models.zipformer.checkpoint``). The model interface
(``compute_loss``, ``transcribe``, parameter groups, ``spec``) comes from
:class:`speechadapt.models.ctc_base.CtcAsrMixin`; the text side is the BPE model of
the recipe's ``lang_bpe_N`` directory (``tokenizer``), which the registry attaches.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from torch import Tensor, nn

from speechadapt.models.ctc_base import BpeTokenizer, CtcAsrMixin
from speechadapt.models.zipformer import ZipformerBase, ZipformerConfig
from speechadapt.utils.config import config_to_dict


class ZipformerCtc(CtcAsrMixin, ZipformerBase):
    """Zipformer encoder -> Dropout(0.1) -> Linear(D, vocab) -> LogSoftmax."""

    input_kind = "fbank"
    method_name = "zipformer-ctc"
    group_prefixes = {"frontend": ("encoder_embed.",), "encoder": ("encoder_embed.", "encoder."),
                      "decoder": ("ctc_output.",)}

    def __init__(self, config: Union[ZipformerConfig, dict, str], vocab_size: int,
                 blank_id: int = 0, tokenizer: Optional[BpeTokenizer] = None):
        super().__init__(config)
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 (blank + a symbol), got {vocab_size}")
        if not 0 <= blank_id < vocab_size:
            raise ValueError(f"blank_id {blank_id} outside [0, {vocab_size})")
        if tokenizer is not None and tokenizer.vocab_size != vocab_size:
            raise ValueError(f"the BPE model {tokenizer.model_file} has {tokenizer.vocab_size} pieces, "
                             f"the model {vocab_size} outputs")
        self.vocab_size = vocab_size
        self.blank_id = blank_id
        self.tokenizer = tokenizer
        self.ctc_output = nn.Sequential(
            nn.Dropout(p=0.1), nn.Linear(self.output_dim, vocab_size), nn.LogSoftmax(dim=-1)
        )

    # Fewer fbank frames than this give the front end nothing to convolve.
    min_input_length = 9

    def ctc_logits(self, x: Tensor, x_lens: Tensor, cache: Optional[dict] = None) -> Tuple[Tensor, Tensor]:
        """(N, T, F) features -> (logits (N, T', vocab) before log-softmax, out_lens);
        ``cache``: the frozen bottom runs once per batch (``ZipformerBase.encode``)."""
        encoder_out, out_lens = self.encode(x, x_lens, cache)
        return self.ctc_output[1](self.ctc_output[0](encoder_out)), out_lens

    def forward(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        """(N, T, F) features -> (log_probs (N, T', vocab), out_lens)."""
        logits, out_lens = self.ctc_logits(x, x_lens)
        return self.ctc_output[2](logits), out_lens

    def log_probs(self, x: Tensor, x_lens: Tensor, cache: Optional[dict] = None) -> Tuple[Tensor, Tensor]:
        """As ``forward``; with a ``cache`` the frozen bottom of the encoder runs once per
        batch (``ZipformerBase.encode``)."""
        encoder_out, out_lens = self.encode(x, x_lens, cache)
        return self.ctc_output(encoder_out), out_lens

    # ---- text side -----------------------------------------------------------------
    def _tokenizer(self) -> BpeTokenizer:
        if self.tokenizer is None:
            raise RuntimeError("this ZipformerCtc has no BPE tokenizer: build it through "
                               "speechadapt.models.registry (or pass tokenizer=BpeTokenizer(...))")
        return self.tokenizer

    def encode_texts(self, texts: Sequence[str]) -> List[List[int]]:
        return self._tokenizer().encode(texts)

    def decode_ids(self, ids: Sequence[int]) -> str:
        return self._tokenizer().decode(ids)

    def unknown_characters(self, text: str) -> set:
        return self._tokenizer().unknown_characters(text)

    # ---- rebuilding ----------------------------------------------------------------
    def spec(self) -> Dict[str, Any]:
        return {"kind": "zipformer_ctc", "encoder_config": config_to_dict(self.config),
                "vocab_size": self.vocab_size, "blank_id": self.blank_id,
                "bpe_model": None if self.tokenizer is None else self.tokenizer.model_file}
