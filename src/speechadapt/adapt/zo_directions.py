"""Seeded random directions walked over parameters in fixed-size chunks.

The zeroth-order optimisers never hold a direction z the size of a parameter: z is
regenerated from a seed, chunk by chunk, every time it is needed. A walk visits the
parameters in one fixed order and, for every chunk, draws exactly one chunk of normal
noise from each seed's private generator, so any walk over the same seeds sees the
same z. The chunk size is therefore part of the random stream (saved with the state).
"""

from typing import Dict, Iterator, List, Sequence, Tuple

import torch

DEFAULT_CHUNK_SIZE = 1 << 20  # 4 MB of float32 z; much smaller chunks cost Python overhead


def check_perturbable(param: torch.Tensor) -> None:
    """Chunks are views of the flat storage: a parameter must be contiguous floats."""
    if not param.is_floating_point():
        raise TypeError(f"zeroth-order optimisation needs floating parameters, got {param.dtype}")
    if not param.is_contiguous():
        raise ValueError(
            f"zeroth-order optimisation perturbs parameters in place through a flat view; "
            f"a parameter of shape {tuple(param.shape)} is not contiguous"
        )


def flat_chunks(param: torch.Tensor, chunk_size: int) -> Iterator[torch.Tensor]:
    """Views of consecutive pieces of the parameter's storage (no copies)."""
    flat = param.detach().view(-1)
    for start in range(0, flat.numel(), chunk_size):
        yield flat[start : start + chunk_size]


class SeededDraws:
    """One private generator per seed (and per device), advanced in lock-step.

    ``draw(j, out)`` fills ``out`` with the next chunk of N(0, 1) noise of seed j.
    Callers must draw every seed exactly once per chunk.
    """

    def __init__(self, seeds: Sequence[int]):
        self.seeds = [int(s) for s in seeds]
        self._generators: Dict[torch.device, List[torch.Generator]] = {}

    def _for_device(self, device: torch.device) -> List[torch.Generator]:
        gens = self._generators.get(device)
        if gens is None:
            gens = []
            for seed in self.seeds:
                gen = torch.Generator(device=device)
                gen.manual_seed(seed)
                gens.append(gen)
            self._generators[device] = gens
        return gens

    def draw(self, j: int, out: torch.Tensor) -> torch.Tensor:
        return out.normal_(generator=self._for_device(out.device)[j])


class Workspace:
    """Chunk-sized scratch buffers kept across steps.

    A step then allocates nothing while it runs: no temporary the size of a
    parameter, and no small blocks left between forwards to fragment the CPU heap.
    """

    def __init__(self, size: int):
        self.size = size
        self._buffers: Dict[Tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    def get(self, slot: int, like: torch.Tensor) -> torch.Tensor:
        """Buffer ``slot`` viewed with ``like``'s length, dtype and device."""
        key = (slot, like.device, like.dtype)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = torch.empty(self.size, dtype=like.dtype, device=like.device)
            self._buffers[key] = buffer
        return buffer[: like.numel()]


def walk(
    params: Sequence[torch.Tensor], chunk_size: int
) -> Iterator[Tuple[int, int, torch.Tensor]]:
    """Yield (param index, chunk start, chunk view) in the one fixed order."""
    for index, param in enumerate(params):
        start = 0
        for chunk in flat_chunks(param, chunk_size):
            yield index, start, chunk
            start += chunk.numel()


def state_chunk(state: torch.Tensor, start: int, size: int) -> torch.Tensor:
    """The piece of a parameter-shaped state tensor that matches a chunk."""
    return state.view(-1)[start : start + size]
