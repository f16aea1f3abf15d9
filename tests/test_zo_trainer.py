"""Zeroth-order optimisation through the one Trainer: eval-mode queries without
autograd, exact mid-epoch resume (the ZO generator included), 2-rank gloo DDP equal
to one process on the concatenated batches."""

import pytest
import torch

from speechadapt.training.dist import cleanup_dist, launch, setup_dist
from speechadapt.training.loop import Trainer
from speechadapt.training.optim import OptimizerConfig
from speechadapt.training.options import TrainingConfig
from speechadapt.training.schedulers import SchedulerConfig
from speechadapt.training.toy import ToyModel, collate_cuts, concat_batches, make_toy_cuts, make_toy_dataloader
from speechadapt.utils.safe_load import safe_torch_load


class Interrupt(Exception):
    pass


class WatchedToy(ToyModel):
    """Records the mode and autograd state of every training-loss evaluation."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def compute_loss(self, batch):
        self.calls.append((self.training, torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        return super().compute_loss(batch)


def zo_config(**changes):
    values = dict(optimizer="zo-asr", base_lr=0.05, zo_num_queries=2, zo_eps=1e-2, momentum=0.5, zo_seed=3)
    values.update(changes)
    return OptimizerConfig(**values)


def run(exp_dir, hooks=(), start_batch=0, optimizer=None, dist_info=None, train_dl=None, valid_dl=None,
        num_epochs=2):
    torch.manual_seed(0)
    config = TrainingConfig(exp_dir=str(exp_dir), num_epochs=num_epochs, seed=7, start_batch=start_batch,
                            save_every_n=5, keep_last_k=0, average_period=3, valid_interval=0, log_interval=2,
                            tensorboard=False)
    model = WatchedToy()
    if train_dl is None:
        train_dl = make_toy_dataloader(make_toy_cuts(24), 2.0, seed=3)
        valid_dl = make_toy_dataloader(make_toy_cuts(6), 2.0, shuffle=False)
    trainer = Trainer(config, model, train_dl, valid_dl, dist_info, optimizer_config=optimizer or zo_config(),
                      scheduler_config=SchedulerConfig(warmup_batches=4), batch_hooks=list(hooks))
    trainer.fit()
    return trainer


def test_zo_queries_run_in_eval_mode_without_autograd(tmp_path):
    trainer = run(tmp_path, num_epochs=1)
    assert trainer.zeroth_order and trainer.loss_module is not None
    steps = trainer.params["batch_idx_train"]
    train_calls = [c for c in trainer.model.calls if c[2]]  # inference mode = the optimiser's queries
    assert len(train_calls) == steps * 4 == trainer.optimizer.num_forwards  # 2q forwards per step, q = 2
    assert all(training is False and grad is False for training, grad, _ in train_calls)
    assert all(p.grad is None for p in trainer.model.parameters())
    assert trainer.optimizer.num_backwards == 0 and trainer.optimizer.num_skipped == 0
    torch.manual_seed(0)
    initial = WatchedToy()
    assert any(not torch.equal(a, b) for a, b in zip(initial.parameters(), trainer.model.parameters()))


def test_zo_resume_mid_epoch_is_bit_identical(tmp_path):
    straight = run(tmp_path / "a")

    def interrupt(trainer):
        if trainer.params["batch_idx_train"] == 7:
            raise Interrupt()

    with pytest.raises(Interrupt):
        run(tmp_path / "b", hooks=[interrupt])
    saved = safe_torch_load(tmp_path / "b" / "checkpoint-5.pt")
    assert saved["params"]["cur_epoch"] == 1 and "zo" in saved["optimizer"]
    resumed = run(tmp_path / "b", start_batch=5)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert straight.optimizer.num_steps == resumed.optimizer.num_steps
    assert straight.optimizer.num_forwards == resumed.optimizer.num_forwards
    assert torch.equal(straight.optimizer._master.get_state(), resumed.optimizer._master.get_state())
    a = straight.optimizer.state_dict()["state"]
    b = resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(a[i]["momentum_buffer"], b[i]["momentum_buffer"]) for i in a)


def make_batches(num_cuts, per_batch):
    cuts = list(make_toy_cuts(num_cuts))
    return [collate_cuts(cuts[i:i + per_batch]) for i in range(0, num_cuts, per_batch)]


def _ddp_worker(rank, world_size, out_dir):
    torch.set_num_threads(1)
    dist_info = setup_dist(rank, world_size)
    try:
        train, valid = make_batches(16, 2), make_batches(6, 3)
        trainer = run(out_dir / "ddp", dist_info=dist_info, train_dl=train[rank::world_size],
                      valid_dl=valid[rank::world_size], num_epochs=1)
        torch.save({"model": trainer.model.state_dict(), "valid_loss": trainer.params["valid_loss"]},
                   out_dir / f"rank{rank}.pt")
    finally:
        cleanup_dist()


def test_zo_ddp_two_gloo_ranks_equal_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "0")
    launch(_ddp_worker, 2, tmp_path)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key in rank0["model"]:
        assert torch.equal(rank0["model"][key], rank1["model"][key]), key  # same seeds, averaged losses
    train, valid = make_batches(16, 2), make_batches(6, 3)
    single = run(tmp_path / "single", train_dl=[concat_batches(train[i:i + 2]) for i in range(0, len(train), 2)],
                 valid_dl=valid, num_epochs=1)
    torch.manual_seed(0)
    initial = WatchedToy().state_dict()
    for key, value in single.model.state_dict().items():
        # The mean of the ranks' normalised losses is the loss of the whole batch, to float
        # rounding; (L+ - L-) / 2 eps magnifies that rounding to ~1e-6 after 8 steps.
        torch.testing.assert_close(rank0["model"][key], value, rtol=1e-4, atol=1e-5)
    movement = max((single.model.state_dict()[k] - v).abs().max().item() for k, v in initial.items()
                   if v.is_floating_point())
    assert movement > 1e-3  # the runs moved far more than the tolerance
    assert abs(rank0["valid_loss"] - single.params["valid_loss"]) < 1e-5
