"""FSDP for models that do not fit one GPU (full fine-tuning of the LLM, a 7B LLM with
LoRA): the Trainer's ``--fsdp true`` in place of DDP.

torch's FSDP2 (``fully_shard``): every module whose class name matches ``--fsdp-units``
(default: transformer decoder/encoder layers) becomes one unit whose parameters,
gradients and optimiser state are split over the ranks and gathered only while the unit
runs; the model itself is the root unit (everything else). ``compute_loss`` is
registered as a forward method, so the loop calls the model as it does without FSDP.

Checkpoints stay in the icefall layout and one file (the *consolidated* form): every
rank takes part in gathering the full state dict, rank 0 writes it (on the CPU), so the
averaging tool, decoding, fine-tuning and TTA read an FSDP run's files unchanged. The
optimiser's state is gathered too, keyed by parameter name
(``optimizer["fsdp_full_state"]``): resume it under FSDP, with any number of ranks. For
models whose full state does not fit one host's memory, torch.distributed.checkpoint's
sharded files would be the next step (docs/scale.md).

Supported: first-order torch optimisers (adamw, sgd), fp32 or bf16 autocast. Not (a
clear error): zeroth-order optimisers (no gradients to shard: they run in inference
memory already), ScaledAdam, fp16 (needs a sharded grad scaler), --accum-grad > 1.
"""

import logging
import re
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from speechadapt.training.checkpoint import StateDict, check_state_matches

DEFAULT_UNITS = r"DecoderLayer$|EncoderLayer$"


def check_fsdp_supported(world_size: int, optimizer_name: str, zeroth_order: bool, use_fp16: bool,
                         accum_grad: int) -> None:
    problems = []
    if world_size < 2:
        problems.append("it needs 2 or more processes (--world-size or torchrun)")
    if zeroth_order:
        problems.append(f"--optimizer {optimizer_name} is zeroth-order (no gradients to shard; it needs "
                        f"inference memory only: use DDP or one process)")
    elif optimizer_name not in ("adamw", "sgd"):
        problems.append(f"--optimizer {optimizer_name}: FSDP runs adamw or sgd")
    if use_fp16:
        problems.append("--use-fp16 needs a sharded grad scaler: use --use-bf16")
    if accum_grad > 1:
        problems.append("--accum-grad > 1 is not supported with FSDP yet")
    if problems:
        raise ValueError("--fsdp true: " + "; ".join(problems))


def shard_model(model: nn.Module, unit_pattern: str, device: torch.device) -> List[str]:
    """Apply ``fully_shard`` to the matching modules (innermost first), then to the model.
    Returns the names of the units (the root not counted)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    scalars = replicate_scalar_parameters(model)
    pattern = re.compile(unit_pattern) if unit_pattern else None
    units = []
    if pattern is not None:
        for name, module in reversed(list(model.named_modules())):  # children before their parents
            if name and pattern.search(type(module).__name__) and any(True for _ in module.parameters()):
                fully_shard(module, mesh=mesh, ignored_params=scalars)
                units.append(name)
    fully_shard(model, mesh=mesh, ignored_params=scalars)
    register_fsdp_forward_method(model, "compute_loss")
    logging.info(f"FSDP: {len(units)} units matching {unit_pattern!r} + the root, over "
                 f"{mesh.size()} ranks")
    return units[::-1]


def replicate_scalar_parameters(model: nn.Module) -> set:
    """FSDP2 cannot shard 0-dim parameters (the Zipformer's BiasNorm ``log_scale``, a
    scalar in icefall's checkpoints): they stay whole on every rank, and the trainable
    ones get their gradient averaged over the ranks here, as DDP would."""
    scalars = {p for p in model.parameters() if p.dim() == 0}
    world_size = torch.distributed.get_world_size()

    def average(param: torch.Tensor) -> None:
        torch.distributed.all_reduce(param.grad)
        param.grad.div_(world_size)

    for param in scalars:
        if param.requires_grad:
            param.register_post_accumulate_grad_hook(average)
    return scalars


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_model_state(model: nn.Module, trainable_only: bool = False) -> StateDict:
    """The whole state dict on rank 0 (CPU), {} on the others; every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_options(cpu_offload=True))
    if trainable_only and state:
        keep = {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
        state = {k: v for k, v in state.items() if k in keep}
    return state


def full_optimizer_state(model: nn.Module, optimizer) -> Dict[str, Any]:
    """The optimiser wrapper's state with the torch optimiser's gathered by parameter name."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    gathered = get_optimizer_state_dict(model, optimizer.optimizer, options=_options(cpu_offload=True))
    counters = {k: v for k, v in optimizer.state_dict()["first_order"].items() if k != "grads"}
    return {"fsdp_full_state": gathered, "first_order": counters}


def load_full_states(model: nn.Module, optimizer, checkpoint: Dict[str, Any], path) -> None:
    """Load a consolidated checkpoint (read by every rank) into the sharded model and,
    when given, the optimiser."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    partial = bool((checkpoint.get("params") or {}).get("trainable_only", False))
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}  # DTensor shapes are the global ones
    check_state_matches(own, checkpoint["model"], partial, where=str(path))
    set_model_state_dict(model, checkpoint["model"], options=_options(strict=not partial))
    if optimizer is None:
        return
    saved = checkpoint.get("optimizer") or {}
    if "fsdp_full_state" not in saved:
        raise ValueError(f"{path} holds a DDP / one-process optimiser state: resume it without --fsdp, or start "
                         f"the FSDP run from its weights (--start-epoch 1 after loading them)")
    set_optimizer_state_dict(model, optimizer.optimizer, saved["fsdp_full_state"], options=_options())
    for key, value in (saved.get("first_order") or {}).items():
        setattr(optimizer, key, int(value))


def lockstep(batches, reduce_any) -> Tuple[Optional[Any], bool]:
    """Yield ``(batch, counted)`` until every rank is out of batches: a rank that runs out
    first repeats its last batch uncounted, since each FSDP forward is a collective."""
    iterator = iter(batches)
    last = None
    while True:
        batch = next(iterator, None)
        if not reduce_any(batch is not None):
            return
        if batch is None:
            if last is None:
                raise RuntimeError("FSDP validation: this rank got no validation batch while others did: "
                                   "use a larger validation set or fewer ranks")
            yield last, False
        else:
            last = batch
            yield batch, True
