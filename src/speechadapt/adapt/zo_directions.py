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


class LowRankDirections:
    """LOZO's directions for matrix parameters: z = U V^T / sqrt(r).

    A parameter of shape (m, ...) is a matrix of m rows and n = numel / m columns. U
    (m x r) is fresh for every query (from the query's seed and the parameter's
    index); V (n x r) changes only when ``v_seed`` does (every ``nu`` steps). Dividing by
    sqrt(r) gives z unit-variance entries, so eps and lr mean what they mean for
    MeZO, and E[z z^T] over U and V is the identity: the estimate g z with
    g = <grad, z> is unbiased. (The public LOZO code perturbs by eps U V^T and steps
    by lr <grad, U V^T> U V^T: its lr equals this one divided by r.) Only U and V (r (m + n) numbers)
    exist at any time; a chunk of z is computed from the rows it covers.
    """

    def __init__(self, params: Sequence[torch.Tensor], rank: int):
        if rank < 1:
            raise ValueError(f"LOZO rank must be >= 1, got {rank}")
        self.params = list(params)
        self.rank = int(rank)
        self.v_seed = 0
        self._cached: Tuple = (None, None, None)

    @staticmethod
    def applies_to(param: torch.Tensor) -> bool:
        return param.dim() >= 2

    def _factors(self, query_seed: int, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        key = (query_seed, self.v_seed, index)
        if self._cached[0] == key:
            return self._cached[1], self._cached[2]
        param = self.params[index]
        m = param.shape[0]
        n = param.numel() // m
        gen = torch.Generator(device=param.device)
        gen.manual_seed((query_seed * 1_000_003 + index) % (1 << 62))
        u = torch.randn(m, self.rank, generator=gen, device=param.device, dtype=torch.float32)
        gen.manual_seed((self.v_seed * 1_000_003 + index) % (1 << 62))
        v = torch.randn(n, self.rank, generator=gen, device=param.device, dtype=torch.float32)
        self._cached = (key, u, v)
        return u, v

    def fill(self, query_seed: int, index: int, start: int, out: torch.Tensor) -> torch.Tensor:
        """``out`` = the slice [start, start + len(out)) of the flat z of parameter ``index``."""
        u, v = self._factors(query_seed, index)
        n = v.shape[0]
        first, last = start // n, (start + out.numel() - 1) // n + 1
        block = (u[first:last] @ v.T).reshape(-1)
        offset = start - first * n
        out.copy_(block[offset: offset + out.numel()])
        return out.mul_(self.rank ** -0.5)
