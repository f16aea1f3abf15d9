"""Joint CTC / LLM decoding of LLM-ASR, in its rescoring form.

The frozen encoders of a CTC-compressed LLM-ASR model keep their CTC heads, and a CTC head
is a second, independent opinion on the transcript. Per utterance the candidates are the
LLM's beam (``--decoding-method beam``; greedy gives one) and each encoder's CTC greedy
transcript; each candidate ``y`` is scored by

    (1 - w) * log P_LLM(y | speech)  +  w * mean over encoders of log P_CTC(y | speech)  +  b * words(y)

(both log-likelihoods summed over the whole transcript: the LLM's teacher-forced over its
tokens and ``<|im_end|>``, the CTC's over all alignments of its BPE pieces; sums favour
short transcripts, which the per-word bonus ``b`` offsets) and the best is the transcript.
``w`` = ``--ctc-weight`` and ``b`` = ``--length-bonus``, chosen on dev sets by
``bin/decode.py --ctc-weight-grid --length-bonus-grid`` (the dev WER of every pair from one
pass). This is the hybrid CTC/attention
idea (Watanabe et al. 2017) applied to an N-best list rather than inside the search.
"""

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, List, Sequence, Tuple

import torch
import torch.nn.functional as F

# Teacher-forced scoring of this many (utterance, candidate) prompts per LLM call.
SCORE_CHUNK = 64


@dataclass
class Candidates:
    """Per utterance: candidate transcripts (lower-cased, deduplicated, the LLM's best
    first), their LLM and their CTC log-likelihoods (-inf: no CTC alignment fits)."""

    texts: List[List[str]]
    llm: List[List[float]]
    ctc: List[List[float]]

    def subset(self, keep: Sequence[int]) -> "Candidates":
        return Candidates(*([getattr(self, f)[i] for i in keep] for f in ("texts", "llm", "ctc")))

    def pick(self, ctc_weight: float, length_bonus: float = 0.0) -> List[str]:
        """The best candidate of each utterance for a CTC weight in [0, 1] and a bonus per
        word; weight 0 is the LLM's own search result (the first candidate), what decoding
        without CTC gives."""
        if ctc_weight <= 0:
            return [texts[0] for texts in self.texts]
        out = []
        for texts, llm, ctc in zip(self.texts, self.llm, self.ctc):
            scores = [combined_score(a, b, ctc_weight) + length_bonus * len(t.split())
                      for t, a, b in zip(texts, llm, ctc)]
            out.append(texts[max(range(len(texts)), key=scores.__getitem__)])
        return out


def combined_score(llm: float, ctc: float, ctc_weight: float) -> float:
    if ctc_weight >= 1:
        return ctc
    return (1 - ctc_weight) * llm + ctc_weight * ctc


def check_ctc_encoders(model) -> list:
    """The model's encoders, each a CtcCompressedEncoder with a known BPE model, or an
    error that says what is missing."""
    from speechadapt.models.ctc_compress import CtcCompressedEncoder

    encoders = list(model.encoders)
    if not all(isinstance(e, CtcCompressedEncoder) for e in encoders):
        raise ValueError("--ctc-weight needs an LLM-ASR model trained with --encoder-compress ctc or ctc-tokens "
                         "(its encoders keep their CTC heads); this one has plain encoders")
    missing = [i for i, e in enumerate(encoders) if not e.bpe_model]
    if missing:
        raise ValueError(f"--ctc-weight: no BPE model is known for encoder(s) {missing} (the model.json beside "
                         f"the encoder checkpoint names it); CTC rescoring cannot spell candidates in BPE pieces")
    return encoders


@torch.no_grad()
def rescoring_candidates(model, batch, num_beams: int = 1, max_new_tokens: int = 64) -> Candidates:
    """Candidates with both scores for a SpeechBatch (one encoder pass, one beam search,
    one teacher-forced LLM pass and one CTC forward pass per encoder)."""
    from speechadapt.decoding.ctc import greedy_ctc_collapse

    encoders = check_ctc_encoders(model)
    batch = batch.to(model.device)
    x, x_lens = batch.inputs, batch.input_lens
    outputs = [encoder.forward_with_log_probs(x, x_lens) for encoder in encoders]
    speech = model.encode(x, x_lens, cache={"encoded": [(runs, counts) for runs, counts, _, _ in outputs]})
    bpes = [_bpe(encoder.bpe_model) for encoder in encoders]

    size = len(batch)
    generated = model.generate_from_speech(speech, max_new_tokens, num_beams, return_ids=True,
                                           num_return_sequences=num_beams)
    texts: List[List[str]] = [[] for _ in range(size)]
    for row, ids in enumerate(generated):  # generate returns the beams of each utterance together
        texts[row // num_beams].append(model.tokenizer.decode(ids, skip_special_tokens=True).strip())
    for (_, _, log_probs, lens), bpe, encoder in zip(outputs, bpes, encoders):
        for i, ids in enumerate(greedy_ctc_collapse(log_probs, lens, encoder.blank_id)):
            texts[i].append(bpe.decode(ids).strip())
    texts = [_unique_lower(t) for t in texts]

    owner = [i for i, t in enumerate(texts) for _ in t]
    flat = [c for t in texts for c in t]
    llm = _llm_log_likelihoods(model, speech, owner, flat)
    ctc = torch.stack([_ctc_log_likelihoods(log_probs, lens, bpe, encoder.blank_id, owner, flat)
                       for (_, _, log_probs, lens), bpe, encoder in zip(outputs, bpes, encoders)]).mean(0)
    bounds = [0]
    for t in texts:
        bounds.append(bounds[-1] + len(t))
    return Candidates(texts=texts,
                      llm=[llm[a:b].tolist() for a, b in zip(bounds, bounds[1:])],
                      ctc=[ctc[a:b].tolist() for a, b in zip(bounds, bounds[1:])])


def ctc_rescored_transcripts(model, batch, options) -> List[str]:
    """``transcribe`` with ``options.ctc_weight`` > 0."""
    candidates = rescoring_candidates(model, batch, options.num_beams, options.max_new_tokens)
    return candidates.pick(options.ctc_weight, options.length_bonus)


@lru_cache(maxsize=8)
def _bpe(model_file: str):
    from speechadapt.models.ctc_base import BpeTokenizer

    return BpeTokenizer(model_file)


def _unique_lower(texts: Sequence[str]) -> List[str]:
    seen: dict = {}
    for t in texts:
        seen.setdefault(t.lower(), None)
    return list(seen)


def _llm_log_likelihoods(model, speech, owner: List[int], texts: List[str]) -> torch.Tensor:
    scores = []
    for start in range(0, len(texts), SCORE_CHUNK):
        index = torch.tensor(owner[start:start + SCORE_CHUNK], device=speech[0][0].device)
        chunk_speech = [(frames.index_select(0, index), lens.index_select(0, index)) for frames, lens in speech]
        targets = [model.prompt.target_ids(t) for t in texts[start:start + SCORE_CHUNK]]
        scores.append(model.target_log_likelihoods(chunk_speech, targets).cpu())
    return torch.cat(scores)


def _ctc_log_likelihoods(log_probs: torch.Tensor, lens: torch.Tensor, bpe, blank_id: int,
                         owner: List[int], texts: List[str]) -> torch.Tensor:
    """log P_CTC(text) of each candidate under its utterance's frames (-inf when the text
    has more pieces than the frames can hold; an empty text is the all-blank path)."""
    targets = [bpe.pieces(t) for t in texts]
    index = torch.tensor(owner, device=log_probs.device)
    flat = torch.tensor([p for t in targets for p in t], dtype=torch.long)
    nll = F.ctc_loss(log_probs.index_select(0, index).transpose(0, 1).cpu(), flat,
                     lens.index_select(0, index).cpu(), torch.tensor([len(t) for t in targets]),
                     blank=blank_id, reduction="none", zero_infinity=False)
    return -nll


def wer_by_setting(batches: Sequence[Tuple[Sequence[str], Candidates]], settings: Sequence[Tuple[float, float]],
                   normalize: Callable[[str], List[str]]) -> List[float]:
    """WER (%) of each (CTC weight, length bonus) over (references, candidates) of
    decoded batches."""
    from speechadapt.decoding.scoring import compute_wer

    return [compute_wer((str(i), normalize(ref), normalize(hyp)) for refs, cands in batches
                        for i, (ref, hyp) in enumerate(zip(refs, cands.pick(w, b)))) for w, b in settings]
