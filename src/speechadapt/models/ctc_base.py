"""What every CTC model shares: the loss, greedy decoding and the text side.

:class:`CtcAsrMixin` implements the model interface (``compute_loss``,
``transcribe``) for any module that provides ``forward(x, x_lens) -> (log_probs,
out_lens)``, ``ctc_logits(x, x_lens, cache=None)`` (logits before the softmax), ``blank_id``, ``vocab_size``, ``encode_texts`` and
``decode_ids``: the Zipformer-CTC (fbank, BPE pieces) and the wav2vec2 / HuBERT
adapters (waveform, characters) alike.
"""

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from speechadapt.decoding.ctc import collapse_paths, greedy_ctc_collapse
from speechadapt.models.interface import DecodeOptions, SpeechModelMixin, loss_metrics
from speechadapt.training.metrics import MetricsTracker


class BpeTokenizer:
    """The sentencepiece model of an icefall-style ``lang_bpe_N`` directory."""

    def __init__(self, model_file):
        import sentencepiece as spm

        path = Path(model_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: run the recipe's prepare.sh (the BPE stage) first")
        self.model_file = str(path)
        self.sp = spm.SentencePieceProcessor(model_file=self.model_file)
        self._spellable: dict = {}
        self.upper_case = self._pieces_are_upper_case()

    def _pieces_are_upper_case(self) -> bool:
        """icefall's LibriSpeech models are trained on upper-case text, ours on lower case:
        the case most of the pieces' letters have."""
        pieces = [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]
        upper = sum(sum(ch.isupper() for ch in p) for p in pieces)
        lower = sum(sum(ch.islower() for ch in p) for p in pieces)
        return upper > lower

    def _case(self, text: str) -> str:
        return text.upper() if self.upper_case else text.lower()

    @classmethod
    def from_lang_dir(cls, lang_dir) -> "BpeTokenizer":
        return cls(Path(lang_dir) / "bpe.model")

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, texts: Sequence[str]) -> List[List[int]]:
        """In the case of the model's pieces (lower case for ours, upper for icefall's); a
        transcript that encodes to nothing is an error."""
        ids = self.sp.encode([self._case(t) for t in texts], out_type=int)
        empty = [t for t, i in zip(texts, ids) if not i]
        if empty:
            raise ValueError(f"{len(empty)} transcripts encode to no tokens, e.g. {empty[:2]!r}")
        return ids

    def pieces(self, text: str) -> List[int]:
        """One text's ids in the model's case; an empty text has none (no error)."""
        return self.sp.encode(self._case(text), out_type=int) if text else []

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(list(ids))

    def unknown_characters(self, text: str) -> set:
        """Characters that encode to ``<unk>`` (in the model's case)."""
        unknown = set()
        for char in set(self._case(text)) - {" "}:
            if char not in self._spellable:
                self._spellable[char] = self.sp.unk_id() not in self.sp.encode(char)
            if not self._spellable[char]:
                unknown.add(char)
        return unknown


def check_targets(targets: Sequence[Sequence[int]], vocab_size: int, blank_id: int) -> List[int]:
    flat = [int(t) for seq in targets for t in seq]
    bad = [t for t in flat if t < 0 or t >= vocab_size or t == blank_id]
    if bad:
        raise ValueError(f"target ids must be in [0, {vocab_size}) and not the blank {blank_id}; got e.g. {bad[:5]}")
    return flat


class CtcAsrMixin(SpeechModelMixin):
    blank_id: int
    vocab_size: int
    # Shortest input (frames or samples) the encoder turns into at least one output frame.
    min_input_length: int = 1

    def encode_texts(self, texts: Sequence[str]) -> List[List[int]]:
        raise NotImplementedError

    def decode_ids(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def log_probs(self, x: Tensor, x_lens: Tensor, cache: Optional[dict] = None) -> Tuple[Tensor, Tensor]:
        """``forward``, reusing the frozen part's output held in ``cache`` when the model can."""
        return self(x, x_lens)  # type: ignore[operator]

    def ctc_loss(self, x: Tensor, x_lens: Tensor, targets: Sequence[Sequence[int]],
                 cache: Optional[dict] = None) -> Tuple[Tensor, int]:
        """Summed CTC loss over the batch and the number of output frames (torch's CTC,
        no k2). Impossible alignments (too few frames) give 0 (zero_infinity)."""
        if len(targets) != x.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {x.shape[0]}")
        flat = check_targets(targets, self.vocab_size, self.blank_id)
        log_probs, out_lens = self.log_probs(x, x_lens, cache)
        target_lens = torch.tensor([len(seq) for seq in targets], dtype=torch.long)
        loss = F.ctc_loss(
            log_probs.permute(1, 0, 2).float(),
            torch.tensor(flat, dtype=torch.long),
            out_lens.cpu().long(), target_lens,
            blank=self.blank_id, reduction="sum", zero_infinity=True,
        )
        return loss, int(out_lens.sum())

    @torch.no_grad()
    def greedy_decode(self, x: Tensor, x_lens: Tensor) -> List[List[int]]:
        """Best-path token ids per input (repeats merged, blanks removed)."""
        logits, out_lens = self.ctc_logits(x, x_lens)  # type: ignore[attr-defined]
        return greedy_ctc_collapse(logits, out_lens, self.blank_id)

    def compute_loss(self, batch, cache: Optional[dict] = None) -> Tuple[Tensor, MetricsTracker]:
        batch = batch.to(self.device)
        loss, frames = self.ctc_loss(batch.inputs, batch.input_lens, self.encode_texts(batch.texts), cache)
        return loss, loss_metrics(loss, frames, len(batch))

    # ---- expected WER (speechadapt.adapt.objectives) ---------------------------------
    @torch.no_grad()
    def sample_hypotheses(self, batch, num_samples: int, generator: torch.Generator, temperature: float = 1.0):
        """``num_samples`` frame paths per utterance drawn from the frame posteriors
        (at ``temperature``), and their collapsed texts ``[n][B]``."""
        batch = batch.to(self.device)
        logits, out_lens = self.ctc_logits(batch.inputs, batch.input_lens)
        probs = (logits.float() / temperature).softmax(-1).cpu()
        b, t, c = probs.shape
        paths = torch.multinomial(probs.reshape(-1, c), num_samples, replacement=True, generator=generator)
        paths = paths.reshape(b, t, num_samples).permute(2, 0, 1).contiguous()  # (n, B, T)
        texts = [[self.decode_ids(ids) for ids in collapse_paths(paths[i], out_lens.cpu(), self.blank_id)]
                 for i in range(num_samples)]
        return (paths, out_lens.cpu(), temperature), texts

    def hypothesis_log_probs(self, batch, hyps, cache: Optional[dict] = None) -> Tensor:
        """Log-probabilities (n, B) of sampled frame paths under the current weights
        (divided by the sampling temperature)."""
        paths, out_lens, temperature = hyps
        batch = batch.to(self.device)
        log_probs, _ = self.log_probs(batch.inputs, batch.input_lens, cache)  # (B, T, C)
        picked = log_probs.float().gather(-1, paths.permute(1, 2, 0).to(log_probs.device))  # (B, T, n)
        valid = torch.arange(paths.shape[2], device=picked.device)[None, :] < out_lens.to(picked.device)[:, None]
        return (picked * valid[..., None]).sum(1).T / temperature

    @torch.no_grad()
    def transcribe(self, batch, options: DecodeOptions = DecodeOptions()) -> List[str]:
        if options.num_beams > 1:
            raise ValueError(f"{type(self).__name__} decodes greedily: beam search is not implemented "
                             f"for CTC models (use --decoding-method greedy)")
        batch = batch.to(self.device)
        return [self.decode_ids(ids) for ids in self.greedy_decode(batch.inputs, batch.input_lens)]
