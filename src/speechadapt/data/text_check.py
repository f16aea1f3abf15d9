"""Transcripts a model cannot learn from, found before training rather than at batch N.

An empty transcript (no supervision text) and characters outside the model's
vocabulary (which a BPE model would silently train as ``<unk>``) are counted over the
whole cut set and reported with cut ids. Up to ``max_bad_fraction`` of the cuts this is
a warning (empty ones are left out of training); above it, an error.
"""

import logging
from collections import Counter
from typing import Callable, Set

from lhotse import CutSet

from speechadapt.data.dataset import cut_text

_SHOWN = 10


def _ids(ids) -> str:
    return ", ".join(ids[:_SHOWN]) + (f" (+{len(ids) - _SHOWN} more)" if len(ids) > _SHOWN else "")


def check_transcripts(cuts: CutSet, unknown_characters: Callable[[str], Set[str]], max_bad_fraction: float,
                      name: str) -> CutSet:
    """``cuts`` without the empty-transcript ones; raises when too many cuts are bad."""
    total, empty, unknown_cuts, unknown = 0, [], [], Counter()
    for cut in cuts:
        total += 1
        text = cut_text(cut, require_text=False)
        if not text:
            empty.append(cut.id)
            continue
        chars = unknown_characters(text)
        if chars:
            unknown_cuts.append(cut.id)
            unknown.update(c for c in text if c in chars)
    if total == 0:
        raise ValueError(f"cuts '{name}' hold no cut")
    problems = []
    if empty:
        problems.append(f"{len(empty)} with an empty transcript ({_ids(empty)})")
    if unknown_cuts:
        chars = ", ".join(f"{c!r} x{n}" for c, n in unknown.most_common(_SHOWN))
        problems.append(f"{len(unknown_cuts)} with characters the model cannot spell: {chars} "
                        f"({_ids(unknown_cuts)})")
    if not problems:
        return cuts
    bad = len(empty) + len(unknown_cuts)
    message = f"cuts '{name}': {bad} of {total} cuts are unusable as they are: " + "; ".join(problems)
    if bad > max_bad_fraction * total:
        raise ValueError(f"{message}. That is more than --max-bad-transcripts {max_bad_fraction} of the set: "
                         f"fix the data (or raise the threshold)")
    logging.warning(message + (": the empty ones are left out" if empty else ""))
    if not empty:
        return cuts
    drop = set(empty)
    return cuts.filter(lambda cut: cut.id not in drop)
