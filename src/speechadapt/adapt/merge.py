"""Weight-space merging of a pre-trained model with its fine-tuned descendants (Speech-FT).

    theta = theta_0 + alpha * mean_i(theta_i - theta_0)

over the keys of the base model ``theta_0`` (the fine-tuned models may hold more, e.g. a
task head: :func:`merge_state_dicts` takes those from the first fine-tuned model when
asked). alpha 0 is the pre-trained model, 1 the (mean) fine-tuned one; values in between
keep what fine-tuning gained while forgetting less of the source domain.

* Only floating-point tensors are interpolated; integer buffers (batch counters) keep
  the base's values: averaging a count means nothing.
* LoRA adapters are folded into their base weights first (:func:`fold_lora`):
  W + scaling * B @ A, as peft's ``merge_and_unload`` does, with B set to zero, so the
  folded state still loads into the same LoRA-wrapped model and computes the same. Two
  LoRA runs differ in A and B, which cannot be interpolated factor by factor.
* What is merged is chosen by ``include`` / ``exclude`` regexes on key names (e.g. only
  the encoder); the rest keeps the base's values.
"""

import re
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import torch
from torch import nn

StateDict = Dict[str, torch.Tensor]

LORA_MARKERS = (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B.", ".lora_magnitude_vector")


def is_lora_key(key: str) -> bool:
    return any(m in key for m in LORA_MARKERS)


def check_alpha(alpha: float, allow_extrapolation: bool = False) -> float:
    alpha = float(alpha)
    if alpha != alpha:  # NaN
        raise ValueError("alpha is NaN")
    if not allow_extrapolation and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (0: the pre-trained model, 1: the fine-tuned one), got {alpha}; "
                         f"pass --allow-extrapolation to go beyond")
    return alpha


def _compile(patterns: Optional[Iterable[str]], flag: str) -> List[re.Pattern]:
    compiled = []
    for p in patterns or ():
        try:
            compiled.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"{flag} {p!r} is not a regex: {e}") from None
    return compiled


def selected_keys(keys: Iterable[str], include: Optional[Sequence[str]] = None,
                  exclude: Optional[Sequence[str]] = None) -> List[str]:
    """Keys matching any include pattern (all when none given) and no exclude pattern."""
    inc, exc = _compile(include, "include"), _compile(exclude, "exclude")
    chosen = [k for k in keys if (not inc or any(p.search(k) for p in inc)) and not any(p.search(k) for p in exc)]
    if (include or exclude) and not chosen:
        raise ValueError(f"include {list(include or [])} / exclude {list(exclude or [])} select no key to merge")
    return chosen


def merge_state_dicts(base: Mapping[str, torch.Tensor], finetuned: Sequence[Mapping[str, torch.Tensor]],
                      alpha: float, include: Optional[Sequence[str]] = None, exclude: Optional[Sequence[str]] = None,
                      keep_extra_keys: bool = False, allow_extrapolation: bool = False,
                      names: Optional[Sequence[str]] = None) -> StateDict:
    """theta_0 + alpha * mean_i(theta_i - theta_0) on the selected keys of ``base``.

    A selected key missing from a fine-tuned model, or shaped differently, is an error
    naming it (and ``names[i]``, the model's name). Unselected base keys and integer
    tensors keep the base's values. ``keep_extra_keys``: keys only the fine-tuned models
    have are taken from the first of them (else they are dropped, and the number said
    by the caller). States holding LoRA factors must be folded first (:func:`fold_lora`).
    """
    alpha = check_alpha(alpha, allow_extrapolation)
    if not finetuned:
        raise ValueError("merging needs at least one fine-tuned model")
    names = list(names) if names else [f"fine-tuned model {i + 1}" for i in range(len(finetuned))]
    for name, state in zip(["the base model", *names], [base, *finetuned]):
        lora = next((k for k in state if is_lora_key(k)), None)
        if lora is not None:
            raise ValueError(f"{name} holds LoRA factors ({lora}): fold them into the base weights first "
                             f"(speechadapt.adapt.merge.fold_lora), a merge interpolates whole weights")
    chosen = set(selected_keys(base, include, exclude))
    merged: StateDict = {}
    for key, theta_0 in base.items():
        if key not in chosen or not theta_0.is_floating_point():
            merged[key] = theta_0.detach().clone()
            continue
        deltas = torch.zeros(theta_0.shape, dtype=torch.float64, device=theta_0.device)
        for name, state in zip(names, finetuned):
            if key not in state:
                raise KeyError(f"{key} (shape {tuple(theta_0.shape)} in the base model) is missing from {name}")
            theta_i = state[key]
            if theta_i.shape != theta_0.shape:
                raise ValueError(f"{key}: shape {tuple(theta_0.shape)} in the base model but "
                                 f"{tuple(theta_i.shape)} in {name}")
            deltas += theta_i.detach().to(device=theta_0.device, dtype=torch.float64) - theta_0.to(torch.float64)
        value = theta_0.to(torch.float64) + alpha * deltas / len(finetuned)
        merged[key] = value.to(theta_0.dtype)
    if keep_extra_keys:
        for key, value in finetuned[0].items():
            if key not in base:
                merged[key] = value.detach().clone()
    return merged


def extra_keys(base: Mapping[str, torch.Tensor], finetuned: Sequence[Mapping[str, torch.Tensor]]) -> List[str]:
    """Keys of the first fine-tuned model the base lacks (a new head, say)."""
    return sorted(k for k in finetuned[0] if k not in base)


# ---- LoRA ----------------------------------------------------------------------------

def lora_layers(model: nn.Module):
    """(module name, module) of every peft LoRA layer in ``model``."""
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]


def fold_lora(model: nn.Module) -> StateDict:
    """The model's state with every LoRA adapter folded into its base weight
    (W + scaling * B @ A) and B zeroed: what peft's ``merge_and_unload`` computes, kept
    in the LoRA-wrapped layout so the state loads back into the same model."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, layer in lora_layers(model):
        prefix = f"{name}." if name else ""
        base = layer.base_layer
        if not isinstance(base, nn.Linear):
            raise ValueError(f"{name}: folding LoRA into a {type(base).__name__} is not supported (Linear only)")
        if getattr(layer, "use_dora", {}) and any(layer.use_dora.values()):
            raise ValueError(f"{name}: DoRA adapters cannot be folded here")
        weight_key = f"{prefix}base_layer.weight"
        weight = state[weight_key].to(torch.float64)
        for adapter in layer.lora_A:
            a = layer.lora_A[adapter].weight.detach().to(torch.float64)
            b = layer.lora_B[adapter].weight.detach().to(torch.float64)
            delta = layer.scaling[adapter] * (b @ a)
            weight = weight + (delta.T if getattr(layer, "fan_in_fan_out", False) else delta)
            state[f"{prefix}lora_B.{adapter}.weight"] = torch.zeros_like(layer.lora_B[adapter].weight)
        state[weight_key] = weight.to(state[weight_key].dtype)
    return state


def folded_keys(model: nn.Module) -> List[str]:
    """Keys :func:`fold_lora` changes: base weights of LoRA layers and their B factors."""
    keys = []
    for name, layer in lora_layers(model):
        prefix = f"{name}." if name else ""
        keys.append(f"{prefix}base_layer.weight")
        keys.extend(f"{prefix}lora_B.{a}.weight" for a in layer.lora_A)
    return keys


def without_lora(state: Mapping[str, torch.Tensor]) -> StateDict:
    """The state minus the LoRA factors (after folding, B is zero: they carry nothing)."""
    return {k: v for k, v in state.items() if not is_lora_key(k)}
