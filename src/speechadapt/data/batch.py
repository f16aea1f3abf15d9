"""Unpack a datamodule batch: one place that knows lhotse's batch layout."""

from typing import Any, List, Tuple

import torch


def batch_inputs(batch: Any, device) -> Tuple[torch.Tensor, torch.Tensor, List[str], List[str]]:
    """(features (B,T,80), lengths, transcripts, cut ids) from a datamodule batch.

    Accepts lhotse's K2SpeechRecognitionDataset layout (``inputs`` + ``supervisions``
    with ``text``/``num_frames``/``cut``) and a plain dict with ``features``,
    ``features_lens``, ``texts`` (and optional ``cut_ids``).
    """
    if "inputs" in batch:
        sup = batch["supervisions"]
        x, lens, texts = batch["inputs"], sup["num_frames"], list(sup["text"])
        if "sequence_idx" in sup:  # supervision i belongs to input row sequence_idx[i]
            x = x[torch.as_tensor(sup["sequence_idx"])]
        ids = [c.id for c in sup["cut"]] if "cut" in sup else [str(i) for i in range(len(texts))]
    elif "features" in batch:
        x, lens, texts = batch["features"], batch["features_lens"], list(batch["texts"])
        ids = list(batch.get("cut_ids", [str(i) for i in range(len(texts))]))
    else:
        raise KeyError(f"unknown batch layout with keys {sorted(batch)}; expected 'inputs' or 'features'")
    if x.dim() != 3 or len(texts) != x.size(0):
        raise ValueError(f"batch features {tuple(x.shape)} do not match {len(texts)} transcripts")
    return x.to(device), torch.as_tensor(lens).to(device), texts, ids
