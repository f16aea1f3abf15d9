"""Add special tokens (the LLM-ASR speech markers) with real, distinct embedding rows.

Checkpoints such as Qwen2 have more embedding rows than tokenizer entries; the spare
rows were never trained (and some checkpoints zero them). So every newly added token
gets a fresh row drawn around the mean of the existing rows, whether it lands in a
spare row or in one made by resizing: no two new tokens share a row's values, and
none starts as an all-zero or untrained vector.
"""

import logging
from typing import List, Sequence

import torch
from torch import nn

from speechadapt.models.llm_asr_prompt import SPEECH_TOKENS


def _init_new_rows(weight: torch.Tensor, old_rows: int, new_ids: Sequence[int], generator: torch.Generator) -> None:
    """Set ``weight[new_ids]`` to mean + std * noise of the first ``old_rows`` rows."""
    reference = weight[:old_rows].detach().float()
    mean = reference.mean(dim=0)
    std = reference.std(dim=0).clamp(min=1e-4)
    noise = torch.randn(len(new_ids), weight.shape[1], generator=generator)
    rows = (mean + std * noise).to(weight.dtype).to(weight.device)
    with torch.no_grad():
        weight[torch.tensor(list(new_ids), device=weight.device)] = rows


def add_special_tokens(
    model: nn.Module,
    tokenizer,
    tokens: Sequence[str] = SPEECH_TOKENS,
    seed: int = 0,
) -> List[int]:
    """Add ``tokens`` as special tokens; return their ids (in the order given).

    Resizes the model's embeddings (and an untied output layer) when the tokenizer
    outgrows them. Tokens already in the tokenizer keep their ids and rows.
    """
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"duplicate tokens in {list(tokens)}")
    vocab_before = set(tokenizer.get_vocab())
    new_tokens = [t for t in tokens if t not in vocab_before]
    if new_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": new_tokens}, replace_extra_special_tokens=False)
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    new_ids = [i for t, i in zip(tokens, ids) if t in new_tokens]

    embeddings = model.get_input_embeddings()
    rows_before = embeddings.weight.shape[0]
    needed = max(len(tokenizer), max(ids) + 1)
    if needed > rows_before:
        logging.info("resizing token embeddings %d -> %d rows for %s", rows_before, needed, new_tokens)
        model.resize_token_embeddings(needed, mean_resizing=False)
        embeddings = model.get_input_embeddings()
    if new_ids:
        # Mean and spread from the rows that existed before (the trained ones).
        reference_rows = min(rows_before, min(new_ids))
        generator = torch.Generator().manual_seed(seed)
        _init_new_rows(embeddings.weight, reference_rows, new_ids, generator)
        output = model.get_output_embeddings()
        if output is not None and output.weight.data_ptr() != embeddings.weight.data_ptr():
            _init_new_rows(output.weight, reference_rows, new_ids, generator)
    return list(ids)


def token_rows_distinct(model: nn.Module, ids: Sequence[int]) -> bool:
    """True when the input-embedding rows of ``ids`` are pairwise different and non-zero."""
    rows = model.get_input_embeddings().weight[list(ids)].detach().float()
    if (rows.abs().sum(dim=1) == 0).any():
        return False
    distances = torch.cdist(rows, rows) + torch.eye(len(ids), device=rows.device)
    return bool((distances > 0).all())
