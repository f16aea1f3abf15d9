"""One distributed set-up for every entry point.

Three ways in, one code path:
  * single process (``--world-size 1``);
  * ``mp.spawn`` with ``--world-size N`` (icefall's habit): :func:`launch` spawns N
    workers on this host with a free local port;
  * ``torchrun`` (single or multi node): RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR come
    from the environment (env:// rendezvous).
Backend: NCCL when CUDA is available, gloo otherwise.
"""

import datetime
import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or (
        "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ
    )


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_dist(
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    backend: Optional[str] = None,
    master_port: Optional[int] = None,
    timeout_minutes: float = 30.0,
) -> DistInfo:
    """Initialise the process group (if needed) and return this process's place in it."""
    if launched_by_torchrun():
        rank = int(os.environ["RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    else:
        rank = 0 if rank is None else rank
        world_size = 1 if world_size is None else world_size
        local_rank = rank
        if world_size > 1:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            if master_port is not None:
                os.environ["MASTER_PORT"] = str(master_port)
            elif "MASTER_PORT" not in os.environ:
                raise RuntimeError(
                    "setup_dist: world_size > 1 without torchrun needs MASTER_PORT "
                    "(use speechadapt.training.dist.launch, which picks a free port)"
                )
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if use_cuda else "gloo")
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
        logging.info(f"initialised {backend} process group: rank {rank}/{world_size}")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def cleanup_dist() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum across ranks; a no-op in a single process."""
    if get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_lists(items: list) -> list:
    """Every rank's list concatenated in rank order (``all_gather_object``); the list itself
    in a single process."""
    if get_world_size() == 1:
        return list(items)
    gathered: list = [None] * get_world_size()
    dist.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in part]


def broadcast_parameters(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s parameters and buffers (what DDP does at start)."""
    if get_world_size() > 1:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src)


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def launch(fn: Callable, world_size: int = 1, *args) -> None:
    """Run ``fn(rank, world_size, *args)`` the right way for how we were started.

    Under torchrun each process is already a worker: call fn directly with the
    environment's rank. With ``world_size > 1`` otherwise, spawn the workers here (and
    pass a preemption signal this process gets on to them). A preempted run exits with
    :data:`~speechadapt.training.preemption.PREEMPTED_EXIT_CODE`.
    """
    if launched_by_torchrun():
        _run_worker(int(os.environ["RANK"]), fn, int(os.environ["WORLD_SIZE"]), *args)
    elif world_size > 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(find_free_port())
        _spawn(fn, world_size, *args)
    else:
        _run_worker(0, fn, 1, *args)


def _run_worker(rank: int, fn: Callable, world_size: int, *args) -> None:
    from speechadapt.training.preemption import PREEMPTED_EXIT_CODE, Preempted

    try:
        fn(rank, world_size, *args)
    except Preempted as stop:
        logging.warning(str(stop))
        cleanup_dist()
        sys.exit(PREEMPTED_EXIT_CODE)  # SystemExit: mp.spawn's wrapper lets it through as the status


def _spawn(fn: Callable, world_size: int, *args) -> None:
    from speechadapt.training.preemption import DEFAULT_SIGNALS, PREEMPTED_EXIT_CODE, signal_numbers

    context = mp.start_processes(_run_worker, args=(fn, world_size, *args), nprocs=world_size, join=False,
                                 start_method="spawn")

    def forward(number, frame):
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, number)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {n: signal.signal(n, forward) for n in signal_numbers(DEFAULT_SIGNALS).values()}
    try:
        while not context.join():
            pass
    except mp.ProcessExitedException as error:
        if error.exit_code == PREEMPTED_EXIT_CODE:
            sys.exit(PREEMPTED_EXIT_CODE)
        raise
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
