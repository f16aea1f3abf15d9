"""Run tasks each in a fresh process, without ``multiprocessing.Pool``.

The corpus synthesis needs one fresh process per chunk (espeak's and Piper's state must
not carry from one chunk to the next). ``Pool(maxtasksperchild=1)`` did that, and hung
under load: it keeps three threads in the parent and forks replacement workers from
it, so a child can inherit a lock another thread held (the fork-after-threads deadlock),
and a worker that dies or hangs leaves ``imap`` and ``terminate()`` waiting forever.

Here the parent starts each process itself (``forkserver`` by default: children are
forked from a small single-threaded server, never from the caller, which may hold torch
or pytest threads), hears from it over a pipe, and waits with a deadline. A process
that exits without a result, or runs past ``stall_s``, is killed and its task rerun, up
to ``retries`` times; after that :class:`WorkerLostError` names the task. An exception
raised by the task itself travels back and is raised again in the parent (its worker
traceback added as a note), never retried: it would fail the same way.
"""

import logging
import multiprocessing as mp
import multiprocessing.forkserver
import os
import time
import traceback
from collections import deque
from multiprocessing.connection import wait
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

logger = logging.getLogger(__name__)

# a child that has sent its result but does not exit within this is killed
_EXIT_GRACE_S = 10.0


# thread pools the fork server must not start: its children fork from it
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class WorkerLostError(RuntimeError):
    """A task's process died or hung on every try."""


def _child_main(worker: Callable, task: Any, conn) -> None:
    try:
        message = ("ok", worker(task))
    except BaseException as err:  # noqa: BLE001 - everything travels back to the parent
        message = ("error", err, traceback.format_exc())
    try:
        conn.send(message)
    except Exception:  # the exception or result does not pickle: send its text instead
        conn.send(("error", RuntimeError(str(message[-1])[-4000:]), traceback.format_exc()))
    finally:
        conn.close()


def _stop(proc, grace_s: float = 0.0) -> None:
    proc.join(grace_s)
    if proc.is_alive():
        proc.kill()
        proc.join()


def _reap(exiting: List[Tuple[Any, float]]) -> List[Tuple[Any, float]]:
    """Processes that sent their result: joined once gone, killed past their grace time (a
    child that hangs on its way out must not hold a slot or the caller)."""
    still = []
    for proc, deadline in exiting:
        proc.join(0)
        if proc.is_alive() and time.monotonic() < deadline:
            still.append((proc, deadline))
        elif proc.is_alive():
            _stop(proc)
    return still


def process_context(name: str = "forkserver", preload: Sequence[str] = ()):
    """``mp.get_context(name)``; a fork server is started with ``preload`` imported, one thread."""
    ctx = mp.get_context(name)
    if name == "forkserver" and preload:
        # The server imports these once, so a child starts in milliseconds, not the seconds
        # that importing numpy, scipy and torch takes. Only the first start reads the list.
        ctx.set_forkserver_preload(list(preload))
        saved = {var: os.environ.get(var) for var in _THREAD_VARS}
        os.environ.update({var: "1" for var in _THREAD_VARS})
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            for var, value in saved.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
    return ctx


def run_in_fresh_processes(worker: Callable, tasks: Sequence[Any], num_jobs: int, desc: str,
                           stall_s: float, retries: int = 1, context: str = "forkserver",
                           preload: Sequence[str] = ()) -> Iterator[Tuple[int, Any]]:
    """Yield ``(task index, worker(task))`` as tasks finish, at most ``num_jobs`` processes at a
    time, one process per task. ``worker`` must be importable by name (a module-level function).
    ``preload``: the modules a fork server imports before it forks (default: the worker's);
    only the server's first start in a process reads it. Leaving the loop early kills whatever
    still runs."""
    if stall_s <= 0:
        raise ValueError(f"{desc}: stall_s must be > 0, got {stall_s}")
    ctx = process_context(context, list(preload) or [worker.__module__])
    pending = deque(enumerate(tasks))
    lost: Dict[int, int] = {}
    running: Dict[Any, Tuple[Any, int, float]] = {}  # result pipe -> (process, task index, start)
    exiting: List[Tuple[Any, float]] = []  # (process, kill deadline): result in, exit pending
    done = 0

    def give_up_or_requeue(index: int, why: str) -> None:
        lost[index] = lost.get(index, 0) + 1
        if lost[index] > retries:
            raise WorkerLostError(f"{desc}: task {index} of {len(tasks)} {why}, on all {retries + 1} tries "
                                  f"({done} of {len(tasks)} done)")
        logger.warning("%s: task %d %s; rerunning it in a fresh process", desc, index, why)
        pending.appendleft((index, tasks[index]))

    try:
        while pending or running:
            while pending and len(running) < max(1, num_jobs):
                index, task = pending.popleft()
                receive, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_child_main, args=(worker, task, send), daemon=True,
                                   name=f"{desc} task {index}")
                proc.start()
                send.close()  # only the child holds the sending end: its exit makes recv see EOF
                running[receive] = (proc, index, time.monotonic())
            deadline = min(start for _, _, start in running.values()) + stall_s
            for receive in wait(list(running), timeout=max(0.0, deadline - time.monotonic())):
                proc, index, _ = running.pop(receive)
                try:
                    message = receive.recv()
                except EOFError:
                    message = None
                receive.close()
                if message is None:
                    _stop(proc, _EXIT_GRACE_S)  # EOF: it is exiting or gone; its exit code says how
                    give_up_or_requeue(index, f"lost its process (exit code {proc.exitcode}, no result)")
                elif message[0] == "ok":
                    exiting.append((proc, time.monotonic() + _EXIT_GRACE_S))
                    done += 1
                    yield index, message[1]
                else:
                    _stop(proc, _EXIT_GRACE_S)
                    _, err, worker_traceback = message
                    err.add_note(f"{desc}: task {index} failed in its worker process:\n{worker_traceback}")
                    raise err
            exiting = _reap(exiting)
            now = time.monotonic()
            for receive, (proc, index, start) in list(running.items()):
                if now - start >= stall_s:
                    del running[receive]
                    _stop(proc)
                    receive.close()
                    give_up_or_requeue(index, f"ran {stall_s:.0f} s without a result and was killed")
    finally:
        for receive, (proc, _, _) in running.items():
            _stop(proc)
            receive.close()
        for proc, deadline in exiting:
            _stop(proc, max(0.0, deadline - time.monotonic()))
