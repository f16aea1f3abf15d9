"""Which parameters an adaptation method touches: a named group or a regex.

Groups come from the model interface (``model.parameter_groups()``: all, norms, lora,
encoder, decoder, projector, as the model has them); any module gets the generic
all / lora / norms. Every selector returns ``[(name, parameter), ...]`` in
``model.named_parameters()`` order (tied weights once), ready for
:func:`speechadapt.training.optim.build_optimizer`. Selecting nothing is an error,
never a silent no-op.
"""

import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from speechadapt.models.interface import GROUP_NAMES, NamedParams, norm_parameters

SELECTION_MODES = GROUP_NAMES + ("regex",)


def norm_parameter_names(model: nn.Module) -> List[str]:
    """Names of the parameters owned directly by normalisation modules."""
    return [n for n, _ in norm_parameters(model)]


def parameter_groups(model: nn.Module) -> Dict[str, NamedParams]:
    """The model's own groups, or the generic ones of any module."""
    if hasattr(model, "parameter_groups"):
        return model.parameter_groups()
    named = list(model.named_parameters())
    return {"all": named, "lora": [(n, p) for n, p in named if "lora_" in n], "norms": norm_parameters(model)}


def select_parameters(
    model: nn.Module, mode: str = "all", pattern: Optional[str] = None
) -> NamedParams:
    """Pick parameters by ``mode``: a group name ("all", "lora": names containing
    "lora_", "norms": parameters of normalisation modules, and the model's encoder /
    decoder / projector) or "regex" (``re.search(pattern, name)``).
    """
    if mode not in SELECTION_MODES:
        raise ValueError(f"unknown parameter selection {mode!r}; choose from {SELECTION_MODES}")
    if mode == "regex" and not pattern:
        raise ValueError("parameter selection 'regex' needs a pattern")
    if mode != "regex" and pattern is not None:
        raise ValueError(f"a pattern is only used with mode 'regex', not {mode!r}")
    named = list(model.named_parameters())
    if mode == "regex":
        regex = re.compile(pattern)
        selected = [(n, p) for n, p in named if regex.search(n)]
    else:
        selected = parameter_groups(model).get(mode, [])
    if not selected:
        what = f"regex {pattern!r}" if mode == "regex" else f"mode {mode!r}"
        raise ValueError(
            f"parameter selection by {what} matched none of the {len(named)} parameters of "
            f"{type(model).__name__}; adapting zero parameters is an error"
        )
    return selected


def mark_trainable(model: nn.Module, selected: Sequence[Tuple[str, torch.Tensor]]) -> int:
    """requires_grad only on the selected parameters; returns how many elements train."""
    chosen = {id(p) for _, p in selected}
    for param in model.parameters():
        param.requires_grad_(id(param) in chosen)
    return sum(p.numel() for _, p in selected)


def count_elements(selected: Sequence[Tuple[str, torch.Tensor]]) -> int:
    return sum(p.numel() for _, p in selected)
