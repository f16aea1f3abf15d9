"""Which parameters an adaptation method touches: all, LoRA only, norms only, or a regex.

Every selector returns ``[(name, parameter), ...]`` in ``model.named_parameters()``
order (tied weights once), ready for :class:`speechadapt.adapt.zo.ZOOptimizer` or a
torch optimiser. Selecting nothing is an error, never a silent no-op.
"""

import re
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

SELECTION_MODES = ("all", "lora", "norms", "regex")
NamedParams = List[Tuple[str, nn.Parameter]]


def is_norm_module(module: nn.Module) -> bool:
    """LayerNorm, GroupNorm, BatchNorm*, RMSNorm-likes and the Zipformer's BiasNorm."""
    return "Norm" in type(module).__name__


def norm_parameter_names(model: nn.Module) -> List[str]:
    """Names of the parameters owned directly by normalisation modules."""
    names = []
    for module_name, module in model.named_modules():
        if is_norm_module(module):
            prefix = f"{module_name}." if module_name else ""
            names.extend(prefix + name for name, _ in module.named_parameters(recurse=False))
    return names


def select_parameters(
    model: nn.Module, mode: str = "all", pattern: Optional[str] = None
) -> NamedParams:
    """Pick parameters by ``mode``: "all", "lora" (names containing "lora_"),
    "norms" (parameters of normalisation modules) or "regex" (``re.search(pattern, name)``).
    """
    if mode not in SELECTION_MODES:
        raise ValueError(f"unknown parameter selection {mode!r}; choose from {SELECTION_MODES}")
    if mode == "regex" and not pattern:
        raise ValueError("parameter selection 'regex' needs a pattern")
    if mode != "regex" and pattern is not None:
        raise ValueError(f"a pattern is only used with mode 'regex', not {mode!r}")
    named = list(model.named_parameters())
    if mode == "all":
        selected = named
    elif mode == "lora":
        selected = [(n, p) for n, p in named if "lora_" in n]
    elif mode == "norms":
        wanted = set(norm_parameter_names(model))
        selected = [(n, p) for n, p in named if n in wanted]
    else:
        regex = re.compile(pattern)
        selected = [(n, p) for n, p in named if regex.search(n)]
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
