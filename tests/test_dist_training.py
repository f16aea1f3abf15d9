"""DDP through the one set-up: 2 gloo processes agree with each other and with one
process on the concatenated batches; torchrun runs the same entry point."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from speechadapt.training.dist import cleanup_dist, launch, setup_dist
from speechadapt.training.loop import Trainer
from speechadapt.training.optim import OptimizerConfig
from speechadapt.training.options import TrainingConfig
from speechadapt.training.schedulers import SchedulerConfig
from speechadapt.training.toy import ToyModel, collate_cuts, concat_batches, make_toy_cuts

REPO = Path(__file__).resolve().parents[1]


def make_batches(num_cuts, per_batch):
    """Fixed batches of unequal frame counts (so the global normaliser matters)."""
    cuts = list(make_toy_cuts(num_cuts))
    return [collate_cuts(cuts[i:i + per_batch]) for i in range(0, num_cuts, per_batch)]


def config(exp_dir):
    return TrainingConfig(exp_dir=str(exp_dir), num_epochs=1, save_every_n=2, keep_last_k=0, average_period=2,
                          valid_interval=2, log_interval=1, tensorboard=False, seed=5)


def train(exp_dir, train_batches, valid_batches, dist_info=None, accum_grad=1):
    torch.manual_seed(0)
    trainer = Trainer(config(exp_dir), ToyModel(), train_batches, valid_batches, dist_info,
                      optimizer_config=OptimizerConfig(optimizer="adamw", base_lr=0.01, accum_grad=accum_grad),
                      scheduler_config=SchedulerConfig(scheduler="constant"))
    trainer.fit()
    return trainer


def ddp_worker(rank, world_size, out_dir, accum_grad=1):
    torch.set_num_threads(1)
    dist_info = setup_dist(rank, world_size)
    train_batches, valid_batches = make_batches(16, 2), make_batches(6, 3)
    trainer = train(out_dir / "ddp", train_batches[rank::world_size], valid_batches[rank::world_size], dist_info,
                    accum_grad)
    torch.save({"model": trainer.model.state_dict(), "valid_loss": trainer.params["valid_loss"],
                "no_sync": trainer.optimizer.no_sync is not None}, out_dir / f"rank{rank}.pt")
    cleanup_dist()


def test_ddp_two_gloo_processes_match_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "0")  # launch() picks a free one; restored afterwards
    launch(ddp_worker, 2, tmp_path)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key in rank0["model"]:
        assert torch.equal(rank0["model"][key], rank1["model"][key]), key
    assert rank0["valid_loss"] == rank1["valid_loss"]  # reduced over ranks

    train_batches, valid_batches = make_batches(16, 2), make_batches(6, 3)
    single = train(tmp_path / "single",
                   [concat_batches(train_batches[i:i + 2]) for i in range(0, len(train_batches), 2)],
                   valid_batches)
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(rank0["model"][key], value, rtol=0, atol=1e-6)
    assert abs(rank0["valid_loss"] - single.params["valid_loss"]) < 1e-6
    # Only rank 0 wrote checkpoints, and they carry both ranks' RNG states.
    saved = torch.load(tmp_path / "ddp" / "epoch-1.pt", weights_only=True)
    assert len(saved["params"]["rng_states"]) == 2 and saved["params"]["world_size"] == 2
    assert sorted(p.name for p in (tmp_path / "ddp").glob("*.pt")) == [
        "checkpoint-2.pt", "checkpoint-4.pt", "epoch-1.pt"]


def test_ddp_gradient_accumulation_syncs_once_per_update_and_matches_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "0")
    launch(ddp_worker, 2, tmp_path, 2)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    train_batches, valid_batches = make_batches(16, 2), make_batches(6, 3)
    single = train(tmp_path / "single",
                   [concat_batches(train_batches[i:i + 2]) for i in range(0, len(train_batches), 2)],
                   valid_batches, accum_grad=2)
    assert single.optimizer.num_steps == 2  # 4 batches, one update per 2
    assert rank0["no_sync"] and rank1["no_sync"]  # the first batch of each update skipped the all-reduce
    for key, value in single.model.state_dict().items():
        assert torch.equal(rank0["model"][key], rank1["model"][key]), key
        torch.testing.assert_close(rank0["model"][key], value, rtol=0, atol=1e-6)


def test_torchrun_smoke(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "speechadapt.training.toy", "--exp-dir", str(tmp_path), "--num-epochs", "1",
           "--max-duration", "2", "--tensorboard", "false", "--num-cuts", "12", "--valid-interval", "0",
           "--log-interval", "1"]
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(tmp_path / "epoch-1.pt", weights_only=True)
    assert saved["params"]["world_size"] == 2 and saved["batch_idx_train"] > 0
    logs = sorted(p.name.rsplit("-", 1)[-1] for p in (tmp_path / "log").glob("log-train-*"))
    assert logs == ["0", "1"]
    # No terminal: rank 0 logs progress lines (throughput) for the batch job's log file.
    rank0 = next((tmp_path / "log").glob("log-train-*-0")).read_text()
    assert "batch/s" in rank0 and "frames/s" in rank0
