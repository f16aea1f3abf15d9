"""CTC text side: the BPE model, transcripts -> token ids, greedy ids -> words."""

from pathlib import Path
from typing import List, Sequence

import torch

from speechadapt.decoding.results import DecodeFn


def load_bpe(lang_dir):
    """The sentencepiece model of an icefall-style ``lang_bpe_N`` directory."""
    import sentencepiece as spm

    path = Path(lang_dir) / "bpe.model"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run prepare.sh (the BPE stage) first")
    return spm.SentencePieceProcessor(model_file=str(path))


def texts_to_ids(sp, texts: Sequence[str]) -> List[List[int]]:
    """Lower-cased (the BPE model is trained on lower-cased text); an empty text is an error."""
    ids = sp.encode([t.lower() for t in texts], out_type=int)
    empty = [t for t, i in zip(texts, ids) if not i]
    if empty:
        raise ValueError(f"{len(empty)} transcripts encode to no tokens, e.g. {empty[:2]!r}")
    return ids


def ctc_greedy_texts(model, sp) -> DecodeFn:
    """decode_fn for :func:`speechadapt.decoding.results.decode_dataloader`: greedy CTC,
    BPE pieces joined back into words."""

    @torch.no_grad()
    def decode(x: torch.Tensor, lens: torch.Tensor) -> List[str]:
        return [sp.decode(ids) for ids in model.greedy_decode(x, lens)]

    return decode
