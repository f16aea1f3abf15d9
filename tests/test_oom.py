"""Out-of-memory safety: a batch that runs out of GPU memory is skipped and counted in one
process (up to --max-oom-batches) or stops the run naming the batch; the memory scan
probes the epoch's most pessimistic batches without changing the weights. (On a CPU the
OOM is simulated: torch.OutOfMemoryError raised by the model.)"""

import pytest
import torch

from speechadapt.training.loop import Trainer
from speechadapt.training.oom import scan_pessimistic_batches
from speechadapt.training.optim import OptimizerConfig
from speechadapt.training.options import TrainingConfig
from speechadapt.training.schedulers import SchedulerConfig
from speechadapt.training.toy import ToyModel, make_toy_cuts, make_toy_dataloader


class RunsOutOfMemory(ToyModel):
    """Out of memory on the given calls of compute_loss (1-based), or on batches of more than ``max_cuts``."""

    def __init__(self, on_calls=(), max_cuts=None):
        super().__init__()
        self.on_calls, self.max_cuts, self.calls = set(on_calls), max_cuts, 0

    def compute_loss(self, batch):
        self.calls += 1
        if self.calls in self.on_calls or (self.max_cuts and batch["features"].shape[0] > self.max_cuts):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().compute_loss(batch)


def trainer(tmp_path, model, **config):
    torch.manual_seed(0)
    loader = make_toy_dataloader(make_toy_cuts(12), max_duration=4.0, shuffle=False)
    return Trainer(TrainingConfig(exp_dir=str(tmp_path), num_epochs=1, save_every_n=0, average_period=0,
                                  valid_interval=0, tensorboard=False, **config), model, loader, None,
                   optimizer_config=OptimizerConfig(optimizer="adamw", base_lr=1e-2),
                   scheduler_config=SchedulerConfig(scheduler="constant"))


def test_an_oom_batch_is_skipped_and_counted_up_to_the_limit(tmp_path):
    t = trainer(tmp_path / "a", RunsOutOfMemory(on_calls={2}), max_oom_batches=1)
    t.fit()
    assert t.params["num_oom_batches"] == 1 and t.optimizer.num_steps == t.params["batch_idx_train"] - 1
    with pytest.raises(RuntimeError, match=r"out of GPU memory on batch 2 \(.*more than --max-oom-batches 0"):
        trainer(tmp_path / "b", RunsOutOfMemory(on_calls={2})).fit()


def test_the_memory_scan_probes_the_worst_batches_without_an_update(tmp_path):
    t = trainer(tmp_path / "ok", RunsOutOfMemory())
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    assert scan_pessimistic_batches(t) > 0
    assert all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())
    assert all(p.grad is None for p in t.model.parameters())
    small = trainer(tmp_path / "small", RunsOutOfMemory(max_cuts=1))
    with pytest.raises(RuntimeError, match="most pessimistic batch by .*: try"):
        scan_pessimistic_batches(small)


def test_the_scan_runs_a_zeroth_order_step_s_forwards_and_restores(tmp_path):
    torch.manual_seed(0)
    loader = make_toy_dataloader(make_toy_cuts(12), max_duration=4.0, shuffle=False)
    t = Trainer(TrainingConfig(exp_dir=str(tmp_path), num_epochs=1, save_every_n=0, average_period=0,
                               valid_interval=0, tensorboard=False), RunsOutOfMemory(), loader, None,
                optimizer_config=OptimizerConfig(optimizer="mezo", base_lr=1e-2),
                scheduler_config=SchedulerConfig(scheduler="constant"))
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    assert scan_pessimistic_batches(t) > 0 and t.optimizer.num_forwards >= 2
    assert all(torch.allclose(before[k], v, atol=1e-6) for k, v in t.model.state_dict().items())
