"""Shorten a frozen encoder's output with its own CTC head before it reaches the LLM.

Frames whose most likely CTC label is blank are dropped and each run of frames with the
same label is averaged into one vector, so about one vector per BPE piece reaches the
LLM instead of ~6 stacked frames per second. The speech slot then reads like a token
sequence, which is what a tiny LLM pre-trained with copy examples can follow (CTC
compression of speech for sequence-to-sequence models, as in Gaido et al. 2021).
"""

from typing import Optional, Tuple

import torch
from torch import Tensor, nn


def compress_runs(frames: Tensor, lens: Tensor, labels: Tensor, blank_id: int) -> Tuple[Tensor, Tensor]:
    """(B, T, D) frames, (B,) lengths, (B, T) labels -> (B, S, D) run means, (B,) run counts.

    A run is a maximal stretch of non-blank frames with one label; two runs of one label
    apart by a blank stay two (CTC's "a _ a"). An utterance with no non-blank frame
    keeps one vector, the mean of all its frames, so no speech slot is ever empty.
    """
    batch, num_frames, dim = frames.shape
    valid = torch.arange(num_frames, device=frames.device).unsqueeze(0) < lens.unsqueeze(1)
    keep = valid & (labels != blank_id)
    silent = ~keep.any(dim=1, keepdim=True)
    keep = torch.where(silent, valid, keep)
    labels = torch.where(silent, torch.full_like(labels, -1), labels)  # one run per silent utterance
    prev_keep = torch.cat([torch.zeros_like(keep[:, :1]), keep[:, :-1]], dim=1)
    prev_label = torch.cat([torch.full_like(labels[:, :1], -2), labels[:, :-1]], dim=1)
    starts = keep & (~prev_keep | (labels != prev_label))
    run = starts.long().cumsum(dim=1) - 1  # run index of each kept frame
    counts = starts.sum(dim=1)
    max_runs = max(int(counts.max()) if batch else 0, 1)
    flat = (torch.arange(batch, device=frames.device).unsqueeze(1) * max_runs + run)[keep]
    sums = frames.new_zeros(batch * max_runs, dim).index_add_(0, flat, frames[keep])
    sizes = frames.new_zeros(batch * max_runs).index_add_(0, flat, frames.new_ones(flat.numel()))
    means = sums / sizes.clamp(min=1).unsqueeze(1)
    return means.reshape(batch, max_runs, dim), counts


class CtcCompressedEncoder(nn.Module):
    """A frozen encoder followed by CTC compression with its own (frozen) CTC head.

    With ``piece_texts`` (the text of each CTC label) each run also carries its mean CTC
    posterior: the output is ``[hidden (D), posterior (V)]`` and ``ctc_vocab`` = V, which
    the LLM-ASR model reads to give this slot a :class:`CtcTokenProjector`."""

    def __init__(self, encoder: nn.Module, ctc_linear: nn.Linear, blank_id: int = 0, piece_texts=None):
        super().__init__()
        self.encoder = encoder
        self.ctc_linear = ctc_linear
        self.blank_id = blank_id
        self.piece_texts = list(piece_texts) if piece_texts is not None else None
        self.bpe_model: Optional[str] = None  # the CTC labels' sentencepiece model (CTC rescoring), when known
        self.hidden_dim = encoder.output_dim
        self.ctc_vocab = ctc_linear.out_features if piece_texts is not None else 0
        self.output_dim = self.hidden_dim + self.ctc_vocab
        if self.piece_texts is not None and len(self.piece_texts) != ctc_linear.out_features:
            raise ValueError(f"{len(self.piece_texts)} piece texts for a CTC head of {ctc_linear.out_features} labels")

    def forward(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        compressed, counts, _, _ = self.forward_with_log_probs(x, x_lens)
        return compressed, counts

    def forward_with_log_probs(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """``forward``'s (runs, run counts) and the per-frame CTC log-probabilities
        (B, T, V) with their lengths, from one pass (CTC rescoring reads both)."""
        out, out_lens = self.encoder(x, x_lens)
        logits = self.ctc_linear(out)
        if self.ctc_vocab:
            out = torch.cat([out, logits.softmax(dim=-1)], dim=-1)
        compressed, counts = compress_runs(out, out_lens, logits.argmax(dim=-1), self.blank_id)
        return compressed, counts, logits.float().log_softmax(dim=-1), out_lens


def piece_text(piece: str) -> str:
    """A sentencepiece piece as the text it stands for ("\u2581word" -> " word")."""
    return piece.replace("\u2581", " ")


class CtcTokenProjector(nn.Module):
    """Projector of a slot with CTC posteriors: ``posterior @ W + MLP(hidden)``.

    ``W`` (V, H) starts with each CTC label's row at the mean LLM embedding of the tokens
    of its text (blank and special labels at zero) and the MLP's last layer at zero, so
    at initialisation the slot holds, run by run, the token embeddings of what the CTC
    head heard: the LLM's copying reads it from the first update, and training refines
    both parts."""

    def __init__(self, hidden_dim: int, ctc_vocab: int, llm_hidden: int, piece_embeddings: Tensor,
                 dropout: float = 0.1):
        super().__init__()
        if piece_embeddings.shape != (ctc_vocab, llm_hidden):
            raise ValueError(f"piece embeddings of shape {tuple(piece_embeddings.shape)}, want "
                             f"({ctc_vocab}, {llm_hidden})")
        self.hidden_dim = hidden_dim
        self.ctc_vocab = ctc_vocab
        self.piece_embeddings = nn.Parameter(piece_embeddings.detach().clone().float())
        self.dropout = nn.Dropout(dropout)
        self.linear1 = nn.Linear(hidden_dim, llm_hidden)
        from speechadapt.models.zipformer.scaling import SwooshR

        self.activation = SwooshR()
        self.linear2 = nn.Linear(llm_hidden, llm_hidden)
        nn.init.zeros_(self.linear2.weight)
        nn.init.zeros_(self.linear2.bias)

    def forward(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        if x.size(-1) != self.hidden_dim + self.ctc_vocab:
            raise ValueError(f"projector expects {self.hidden_dim} + {self.ctc_vocab} features, got {x.size(-1)}")
        hidden, posterior = x[..., : self.hidden_dim], x[..., self.hidden_dim:]
        y = posterior @ self.piece_embeddings + self.linear2(self.activation(self.linear1(self.dropout(hidden))))
        return y, x_lens


def piece_embedding_table(piece_texts, tokenizer, embeddings: Tensor, skip=(0,)) -> Tensor:
    """(V, H): row v = mean LLM embedding of the tokens of ``piece_texts[v]``; zero for
    the labels in ``skip`` (blank), for special pieces (<...>) and for empty texts."""
    table = embeddings.new_zeros(len(piece_texts), embeddings.size(1))
    for v, text in enumerate(piece_texts):
        if v in skip or not text.strip() or (text.startswith("<") and text.endswith(">")):
            continue
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids:
            table[v] = embeddings[ids].mean(dim=0)
    return table
