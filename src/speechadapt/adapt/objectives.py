"""Training objectives besides a model's own loss: the expected WER of sampled hypotheses.

The WER of a decoded batch is piecewise constant in the weights: a small
perturbation leaves every greedy hypothesis as it is, so L+ = L- and a zeroth-order
step sees no signal. :class:`ExpectedWer` makes it continuous: for each batch it
draws N hypotheses per utterance once (from the model as it is at the batch's first
evaluation, with a seed fixed by the cut ids) and scores their word errors; every
evaluation then weighs those errors by the hypotheses' probabilities under the
current weights (a softmax over the N log-probabilities of each utterance):

    loss(theta) = sum_b sum_i softmax_i(log p_theta(h_bi)) * errors(h_bi, ref_b)

normalised by the reference words: an expected WER over an N-best list, smooth in
theta, and differentiable too (first-order optimisers can minimise it as well).

A model offers it through ``sample_hypotheses(batch, n, generator) -> (hyps, texts)``
(texts ``[n][B]``) and ``hypothesis_log_probs(batch, hyps, cache) -> (n, B)``.
"""

import zlib
from typing import Optional, Tuple

import torch

from speechadapt.decoding.text_norm import normalize_words
from speechadapt.models.interface import loss_metrics


def supports_expected_wer(model) -> bool:
    return hasattr(model, "sample_hypotheses") and hasattr(model, "hypothesis_log_probs")


def word_errors(ref: str, hyp: str) -> int:
    import kaldialign

    return int(kaldialign.edit_distance(normalize_words(ref), normalize_words(hyp))["total"])


class ExpectedWer:
    """An objective for the Trainer: ``(model, batch, cache) -> (loss, info)``."""

    def __init__(self, num_samples: int = 8, temperature: float = 1.0):
        if num_samples < 1:
            raise ValueError(f"--wer-samples must be >= 1, got {num_samples}")
        if temperature <= 0:
            raise ValueError(f"--wer-temperature must be > 0, got {temperature}")
        self.num_samples = int(num_samples)
        self.temperature = float(temperature)
        self._batch_key: Optional[Tuple] = None
        self._hyps = None
        self._errors: Optional[torch.Tensor] = None

    def _sample(self, model, batch) -> None:
        seed = zlib.crc32("|".join(batch.cut_ids).encode())
        generator = torch.Generator().manual_seed(seed)
        # ordinary tensors even inside a ZO step's inference mode: the samples are reused by
        # later evaluations, which may run under autograd (a first-order step)
        with torch.inference_mode(False), torch.no_grad():
            self._hyps, texts = model.sample_hypotheses(batch, self.num_samples, generator, self.temperature)
            self._errors = torch.tensor([[word_errors(ref, texts[i][b]) for b, ref in enumerate(batch.texts)]
                                         for i in range(self.num_samples)], dtype=torch.float32)

    def __call__(self, model, batch, cache=None):
        key = (id(batch), tuple(batch.cut_ids))
        if key != self._batch_key:
            self._sample(model, batch)
            self._batch_key = key
        log_probs = model.hypothesis_log_probs(batch, self._hyps, cache)  # (n, B)
        weights = torch.softmax(log_probs.float(), dim=0)
        loss = (weights * self._errors.to(weights.device)).sum()
        ref_words = sum(len(normalize_words(t)) for t in batch.texts)
        return loss, loss_metrics(loss, ref_words, len(batch))
