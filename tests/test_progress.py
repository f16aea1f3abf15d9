"""Progress without a terminal: a line after the first item, every N items and every
S seconds, with throughput, counted quantities and the ETA."""

import logging

from speechadapt.utils.progress import Progress


def test_batch_job_lines(caplog, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("speechadapt.utils.progress.time.time", lambda: clock[0])
    progress = Progress(range(10), "epoch 2", total=10, every_n=4, every_s=60.0, tty=False)
    with caplog.at_level(logging.INFO):
        for i in progress:
            clock[0] += 10.0 if i != 5 else 70.0  # item 5 is slow: a time-triggered line
            progress.add(frames=100)
            if i == 2:
                assert progress.line().startswith("epoch 2: batch 3/10")  # current inside the loop
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(",")[0] for line in lines] == ["epoch 2: batch 1/10", "epoch 2: batch 4/10",
                                                      "epoch 2: batch 6/10", "epoch 2: batch 8/10"]
    assert "0.10 batch/s" in lines[0] and "10 frames/s" in lines[0] and "ETA 1m30s" in lines[0]
    assert "ETA" not in progress.line()  # done


def test_only_the_main_process_reports(caplog):
    with caplog.at_level(logging.INFO):
        assert list(Progress(range(3), "x", enabled=False, every_n=1, tty=False)) == [0, 1, 2]
    assert not caplog.records
