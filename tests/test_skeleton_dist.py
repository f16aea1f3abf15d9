"""setup_dist: one code path for mp.spawn (--world-size N) and torchrun, gloo on CPU."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from speechadapt.training.dist import cleanup_dist, launch, setup_dist

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _all_reduce_worker(rank, world_size, out_dir):
    info = setup_dist(rank, world_size)
    t = torch.tensor([float(info.rank + 1)])
    torch.distributed.all_reduce(t)
    Path(out_dir, f"rank{info.rank}.txt").write_text(f"{info.world_size} {t.item()}")
    cleanup_dist()


def test_mp_spawn_all_reduce(tmp_path):
    launch(_all_reduce_worker, 2, str(tmp_path))
    for r in range(2):
        assert Path(tmp_path, f"rank{r}.txt").read_text() == "2 3.0"


def test_single_process_is_not_distributed():
    info = setup_dist()
    assert info.world_size == 1 and info.rank == 0 and not info.is_distributed


def test_torchrun_all_reduce(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        from pathlib import Path
        from speechadapt.training.dist import launch, setup_dist, cleanup_dist
        def main(rank, world_size):
            info = setup_dist()
            t = torch.tensor([float(info.rank + 1)])
            torch.distributed.all_reduce(t)
            Path({str(tmp_path)!r}, f"rank{{info.rank}}.txt").write_text(f"{{info.world_size}} {{t.item()}}")
            cleanup_dist()
        launch(main, 1)
    """))
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "0",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0", str(script)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in range(2):
        assert Path(tmp_path, f"rank{r}.txt").read_text() == "2 3.0"
