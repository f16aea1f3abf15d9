"""utils.workers: one fresh process per task, with deadlines instead of Pool's endless waits."""

import os
import threading
import time

import pytest

from speechadapt.utils.workers import WorkerLostError, run_in_fresh_processes


def _square(x):
    return x * x


def _pid(_):
    return os.getpid()


def _sleep_forever_on_two(x):
    if x == 2:
        time.sleep(3600)
    return x


class _Refused(ValueError):
    pass


def _raise_on_one(x):
    if x == 1:
        raise _Refused(f"item {x} is bad")
    return x


def _unpicklable_result(_):
    return threading.Lock()


def test_every_task_comes_back_once_each_in_its_own_process():
    got = dict(run_in_fresh_processes(_square, list(range(6)), 2, "squares", stall_s=60))
    assert got == {i: i * i for i in range(6)}
    pids = [pid for _, pid in run_in_fresh_processes(_pid, list(range(4)), 2, "pids", stall_s=60)]
    assert len(set(pids)) == 4 and os.getpid() not in pids


def test_a_hung_task_is_killed_rerun_and_then_named():
    start = time.monotonic()
    results = {}
    with pytest.raises(WorkerLostError, match=r"hang: task 2 of 4 ran 2 s without a result and was killed, "
                                              r"on all 2 tries"):
        for index, value in run_in_fresh_processes(_sleep_forever_on_two, [0, 1, 2, 3], 2, "hang", stall_s=2):
            results[index] = value
    assert time.monotonic() - start < 30  # two kills of 2 s each, not an hour
    assert {0, 1} <= set(results) and 2 not in results


def test_a_task_that_raises_is_not_retried_and_keeps_its_type_and_traceback():
    with pytest.raises(_Refused, match="item 1 is bad") as caught:
        list(run_in_fresh_processes(_raise_on_one, [0, 1, 2], 1, "refuse", stall_s=60))
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "refuse: task 1 failed in its worker process" in notes and "_raise_on_one" in notes


def test_a_result_that_cannot_travel_is_an_error_not_a_hang():
    with pytest.raises(RuntimeError, match="pickle"):
        list(run_in_fresh_processes(_unpicklable_result, [0], 1, "lock", stall_s=60))


def test_leaving_early_kills_what_still_runs_and_bad_limits_are_refused():
    runner = run_in_fresh_processes(_sleep_forever_on_two, [0, 2, 2], 3, "early", stall_s=600)
    assert next(runner) == (0, 0)
    start = time.monotonic()
    runner.close()  # the two sleepers are killed, not waited for
    assert time.monotonic() - start < 10
    with pytest.raises(ValueError, match="stall_s must be > 0"):
        next(run_in_fresh_processes(_square, [1], 1, "zero", stall_s=0))
