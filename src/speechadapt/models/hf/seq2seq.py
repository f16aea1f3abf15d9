"""Whisper behind a small seq2seq interface (``loss``, ``generate``) and the project's
model interface (``compute_loss``, ``transcribe`` of a waveform SpeechBatch).

Inputs are either log-mel features ``(N, n_mels, 3000)`` or audio: a padded 16 kHz
waveform batch ``(N, S)`` with lengths, or a list of 1-D waveforms. Labels are the
tokenizer's prefix (<|startoftranscript|><|lang|><|task|><|notimestamps|>), the
transcript and <|endoftext|>; the decoder is fed the sequence without its last token.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from speechadapt.models.interface import DecodeOptions, SpeechModelMixin, loss_metrics
from speechadapt.training.metrics import MetricsTracker

IGNORE_ID = -100
AudioLike = Union[torch.Tensor, Sequence[Union[torch.Tensor, np.ndarray]]]


class WhisperAdapter(SpeechModelMixin, nn.Module):
    """Wraps ``WhisperForConditionalGeneration`` and its ``WhisperProcessor``."""

    input_kind = "waveform"
    method_name = "whisper"
    group_prefixes = {"encoder": ("model.model.encoder.",), "decoder": ("model.model.decoder.", "model.proj_out.")}

    def __init__(self, model: nn.Module, processor, language: Optional[str] = "en", task: str = "transcribe",
                 model_dir: Optional[str] = None, dtype: Optional[str] = None):
        super().__init__()
        self.model = model
        self.processor = processor
        self.model_dir = model_dir
        self.dtype_name = dtype
        self.tokenizer = processor.tokenizer
        self.feature_extractor = processor.feature_extractor
        self.language = language
        self.task = task
        self.tokenizer.set_prefix_tokens(language=language, task=task, predict_timestamps=False)
        self.prefix_ids = list(self.tokenizer.prefix_tokens)
        self.eot_id = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def compute_features(self, audio: AudioLike, audio_lens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Waveforms -> log-mel features (N, n_mels, frames) on the model's device and dtype."""
        if isinstance(audio, torch.Tensor):
            if audio.dim() != 2:
                raise ValueError(f"expected a waveform batch (N, S), got shape {tuple(audio.shape)}")
            lens = audio_lens.tolist() if audio_lens is not None else [audio.shape[1]] * audio.shape[0]
            waves = [row[: int(n)].detach().float().cpu().numpy() for row, n in zip(audio, lens)]
        else:
            waves = [np.asarray(w.detach().cpu() if isinstance(w, torch.Tensor) else w, dtype=np.float32)
                     for w in audio]
        if any(w.ndim != 1 for w in waves):
            raise ValueError("each waveform must be 1-D (mono, 16 kHz)")
        sampling_rate = self.feature_extractor.sampling_rate
        features = self.feature_extractor(waves, sampling_rate=sampling_rate, return_tensors="pt").input_features
        return features.to(self.device, self.dtype)

    def _features(self, inputs: AudioLike, input_lens: Optional[torch.Tensor]) -> torch.Tensor:
        if isinstance(inputs, torch.Tensor) and inputs.dim() == 3:
            return inputs.to(self.device, self.dtype)
        return self.compute_features(inputs, input_lens)

    def label_ids(self, texts: Sequence[str], include_prefix_in_loss: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(decoder_input_ids, labels)`` (N, L); labels are IGNORE_ID on padding.

        The prefix after <|startoftranscript|> (language, task, notimestamps) is forced
        at decoding time, so by default it is not scored.
        """
        rows = [self.tokenizer(text, add_special_tokens=True)["input_ids"] for text in texts]
        width = max(len(r) for r in rows) - 1
        inputs = torch.full((len(rows), width), self.eot_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_ID, dtype=torch.long)
        skip = 0 if include_prefix_in_loss else len(self.prefix_ids) - 1
        for i, row in enumerate(rows):
            if row[: len(self.prefix_ids)] != self.prefix_ids:
                raise ValueError(f"tokenizer did not add the prefix {self.prefix_ids}: got {row[:8]}")
            n = len(row) - 1
            inputs[i, :n] = torch.tensor(row[:-1])
            labels[i, skip:n] = torch.tensor(row[1 + skip:])
        return inputs.to(self.device), labels.to(self.device)

    def loss(
        self,
        inputs: AudioLike,
        texts: Sequence[str],
        input_lens: Optional[torch.Tensor] = None,
        include_prefix_in_loss: bool = False,
    ) -> Tuple[torch.Tensor, int]:
        """Summed token cross-entropy over the batch and the number of scored tokens."""
        if len(texts) == 0 or len(inputs) != len(texts):
            raise ValueError(f"got {len(texts)} transcripts for a batch of {len(inputs)}")
        features = self._features(inputs, input_lens)
        decoder_input_ids, labels = self.label_ids(texts, include_prefix_in_loss)
        logits = self.model(input_features=features, decoder_input_ids=decoder_input_ids).logits
        loss_sum = nn.functional.cross_entropy(
            logits.float().transpose(1, 2), labels, ignore_index=IGNORE_ID, reduction="sum"
        )
        return loss_sum, int((labels != IGNORE_ID).sum())

    def decode(self, token_ids: torch.Tensor) -> List[str]:
        """Generated ids -> text; ids beyond the tokenizer (wide toy vocabularies) are dropped."""
        known = len(self.tokenizer)
        rows = [[t for t in row if t < known] for row in token_ids.tolist()]
        return [t.strip() for t in self.tokenizer.batch_decode(rows, skip_special_tokens=True)]

    @torch.no_grad()
    def generate(
        self,
        inputs: AudioLike,
        input_lens: Optional[torch.Tensor] = None,
        max_new_tokens: int = 128,
        num_beams: int = 1,
    ) -> List[str]:
        """Greedy (or beam) transcription of a batch with the configured language and task."""
        features = self._features(inputs, input_lens)
        limit = self.model.config.max_target_positions - len(self.prefix_ids)
        sequences = self.model.generate(
            input_features=features,
            language=self.language,
            task=self.task,
            max_new_tokens=min(max_new_tokens, limit),
            num_beams=num_beams,
            do_sample=False,
        )
        return self.decode(sequences)

    # ---- the model interface ---------------------------------------------------------
    def compute_loss(self, batch, cache: Optional[dict] = None) -> Tuple[torch.Tensor, MetricsTracker]:
        loss, num_tokens = self.loss(batch.inputs, batch.texts, batch.input_lens)
        return loss, loss_metrics(loss, num_tokens, len(batch))

    @torch.no_grad()
    def transcribe(self, batch, options: DecodeOptions = DecodeOptions()) -> List[str]:
        return self.generate(batch.inputs, batch.input_lens, max_new_tokens=options.max_new_tokens,
                             num_beams=options.num_beams)

    def spec(self) -> Dict[str, Any]:
        return {"kind": "whisper", "model_dir": self.model_dir, "dtype": self.dtype_name,
                "language": self.language, "task": self.task}
