"""The training loop: exact resume, non-finite guard, freezing, AMP flags, averaging."""

import logging
import math

import pytest
import torch

from speechadapt.training.checkpoint import load_checkpoint
from speechadapt.training.loop import NonFiniteLossError, Trainer
from speechadapt.training.optim import OptimizerConfig
from speechadapt.training.options import TrainingConfig
from speechadapt.training.schedulers import SchedulerConfig
from speechadapt.training.toy import ToyModel, collate_cuts, make_spec_augment, make_toy_cuts, make_toy_dataloader
from speechadapt.utils.safe_load import safe_torch_load

torch.set_num_threads(1)


class Interrupt(Exception):
    pass


def make_config(exp_dir, **changes):
    values = dict(exp_dir=str(exp_dir), num_epochs=2, seed=7, save_every_n=5, keep_last_k=0, average_period=3,
                  valid_interval=4, log_interval=2, tensorboard=False)
    values.update(changes)
    return TrainingConfig(**values)


def make_trainer(config, model, train_dl, valid_dl=None, optimizer="scaled_adam", lr=0.04, scheduler="eden",
                 **kwargs):
    return Trainer(config, model, train_dl, valid_dl, optimizer_config=OptimizerConfig(optimizer=optimizer, base_lr=lr),
                   scheduler_config=SchedulerConfig(scheduler=scheduler, warmup_batches=4, total_steps=7), **kwargs)


def lhotse_loaders():
    return make_toy_dataloader(make_toy_cuts(24), 2.0, seed=3), make_toy_dataloader(make_toy_cuts(6), 2.0, shuffle=False)


def lhotse_iterable_loaders():
    """lhotse's IterableDatasetWrapper pattern (the sampler lives inside the dataset)."""
    from lhotse.dataset.iterable_dataset import IterableDatasetWrapper

    def wrap(dl):
        dataset = IterableDatasetWrapper(dataset=dl.dataset, sampler=dl.sampler)
        return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=0)

    return tuple(wrap(dl) for dl in lhotse_loaders())


def plain_loaders():
    """A plain torch DataLoader (shuffled from the global RNG, no set_epoch)."""
    cuts = list(make_toy_cuts(20))
    train = torch.utils.data.DataLoader(cuts, batch_size=3, shuffle=True, collate_fn=collate_cuts)
    valid = torch.utils.data.DataLoader(cuts[:4], batch_size=2, collate_fn=collate_cuts)
    return train, valid


def train(config, loaders=lhotse_loaders, batch_hooks=(), spec_augment=True, **optim):
    torch.manual_seed(0)
    model = ToyModel(spec_augment=make_spec_augment() if spec_augment else None)
    train_dl, valid_dl = loaders()
    trainer = make_trainer(config, model, train_dl, valid_dl, batch_hooks=list(batch_hooks), **optim)
    trainer.fit()
    return trainer


def interrupt_at(batch_idx):
    def hook(trainer):
        if trainer.params["batch_idx_train"] == batch_idx:
            raise Interrupt()
    return hook


def assert_same_params(a, b):
    for (name, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(p, q), f"{name} differs"


def test_resume_at_epoch_boundary_is_exact(tmp_path):
    straight = train(make_config(tmp_path / "a"))
    train(make_config(tmp_path / "b", num_epochs=1))
    resumed = train(make_config(tmp_path / "b", start_epoch=2))
    assert_same_params(straight, resumed)
    assert straight.params["batch_idx_train"] == resumed.params["batch_idx_train"] > 10
    assert straight.params["best_valid_loss"] == resumed.params["best_valid_loss"]
    # model_avg goes through float32 on disk: equal to float tolerance, not bit for bit.
    avg_a = safe_torch_load(tmp_path / "a" / "epoch-2.pt")["model_avg"]
    avg_b = safe_torch_load(tmp_path / "b" / "epoch-2.pt")["model_avg"]
    for key in avg_a:
        torch.testing.assert_close(avg_a[key], avg_b[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("loaders", [lhotse_loaders, lhotse_iterable_loaders, plain_loaders],
                         ids=["lhotse", "lhotse-iterable", "plain"])
def test_resume_mid_epoch_with_start_batch_is_exact(tmp_path, loaders):
    straight = train(make_config(tmp_path / "a"), loaders)
    with pytest.raises(Interrupt):
        train(make_config(tmp_path / "b"), loaders, [interrupt_at(7)])
    saved = safe_torch_load(tmp_path / "b" / "checkpoint-5.pt")
    assert saved["params"]["cur_epoch"] == 1 and 0 < saved["params"]["batch_idx_in_epoch"] == 5
    assert not (tmp_path / "b" / "epoch-1.pt").exists()
    resumed = train(make_config(tmp_path / "b", start_batch=5), loaders)
    assert_same_params(straight, resumed)
    # The untouched trainer parts match too: optimiser moments, step counters and the schedule.
    opt_a = straight.optimizer.state_dict()["state"]
    opt_b = resumed.optimizer.state_dict()["state"]
    assert straight.optimizer.num_forwards == resumed.optimizer.num_forwards == straight.params["batch_idx_train"]
    for i in opt_a:
        assert torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"])
    assert straight.scheduler.get_last_lr() == resumed.scheduler.get_last_lr()


def test_spec_augment_randomness_matters_for_resume(tmp_path):
    """Guard against a vacuous resume test: SpecAugment does change the outcome."""
    with_aug = train(make_config(tmp_path / "a", num_epochs=1))
    without = train(make_config(tmp_path / "b", num_epochs=1), spec_augment=False)
    diffs = [not torch.equal(p, q) for p, q in zip(with_aug.model.parameters(), without.model.parameters())]
    assert any(diffs)


def test_checkpoint_contents_load_with_weights_only(tmp_path):
    train(make_config(tmp_path, num_epochs=1, keep_last_k=1, save_every_n=2))
    files = sorted(p.name for p in tmp_path.glob("checkpoint-*.pt"))
    assert files == ["checkpoint-6.pt"]  # keep last 1
    ckpt = torch.load(tmp_path / "epoch-1.pt", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "grad_scaler", "sampler", "model_avg",
                "batch_idx_train", "params"):
        assert key in ckpt
    assert ckpt["batch_idx_train"] == ckpt["params"]["batch_idx_train"] == 7
    assert ckpt["sampler"]["epoch"] == 1
    # The file's model_avg covers all 7 batches (the partial period folded into a copy); the
    # running average as it was in memory (last folded at batch 6, period 3) is kept for resume.
    assert ckpt["params"]["avg_batch_idx"] == 6
    live = ckpt["model_avg_live"]
    assert all(v.dtype == torch.float64 for v in live.values() if v.is_floating_point())
    assert not torch.equal(live["encoder.weight"].float(), ckpt["model_avg"]["encoder.weight"])
    assert math.isfinite(ckpt["params"]["valid_loss"])


class PoisonedToy(ToyModel):
    """The toy model whose training loss turns non-finite at the given global batches."""

    def __init__(self, bad_batches, value=float("nan")):
        super().__init__()
        self.bad_batches, self.value = set(bad_batches), value

    def compute_loss(self, batch):
        loss, info = super().compute_loss(batch)
        if self.training and (self.batch_count in self.bad_batches or "all" in self.bad_batches):
            loss = loss * self.value
        return loss, info


def test_nonfinite_guard_skips_poisoned_batch(tmp_path, caplog):
    torch.manual_seed(0)
    train_dl, valid_dl = lhotse_loaders()
    trainer = make_trainer(make_config(tmp_path, num_epochs=1), PoisonedToy({3}), train_dl, valid_dl,
                           optimizer="adamw", lr=1e-2)
    with caplog.at_level(logging.WARNING):
        trainer.fit()
    assert trainer.params["num_bad_batches"] == 1
    assert "batch 3: non-finite loss" in caplog.text
    steps = {int(s["step"]) for s in trainer.optimizer.state_dict()["state"].values()}
    assert steps == {trainer.params["batch_idx_train"] - 1}
    assert trainer.optimizer.num_skipped == 1 and trainer.optimizer.num_backwards == steps.pop()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_nonfinite_guard_stops_after_too_many(tmp_path):
    torch.manual_seed(0)
    train_dl, _ = lhotse_loaders()
    trainer = make_trainer(make_config(tmp_path, max_bad_batches=3), PoisonedToy({"all"}, float("inf")), train_dl)
    with pytest.raises(NonFiniteLossError):
        trainer.fit()
    assert trainer.params["batch_idx_train"] == 3


def test_freeze_pattern_and_batch_count_hook(tmp_path):
    torch.manual_seed(0)
    model = ToyModel()
    before = model.encoder.weight.detach().clone()
    train_dl, valid_dl = lhotse_loaders()
    seen = []
    trainer = make_trainer(make_config(tmp_path, num_epochs=1, freeze_pattern=[r"^encoder\."]), model, train_dl,
                           valid_dl, optimizer="adamw", batch_hooks=[lambda t: seen.append(t.model.batch_count)])
    trainer.fit()
    assert torch.equal(model.encoder.weight, before)
    assert not model.encoder.weight.requires_grad and model.output.weight.requires_grad
    assert seen == list(range(1, trainer.params["batch_idx_train"] + 1))
    with pytest.raises(ValueError, match="matched no parameter"):
        make_trainer(make_config(tmp_path / "b", freeze_pattern=["nope"]), ToyModel(), train_dl)


def test_amp_flags_are_noops_on_cpu(tmp_path, caplog):
    train_dl, _ = lhotse_loaders()
    with caplog.at_level(logging.INFO):
        trainer = make_trainer(make_config(tmp_path, use_bf16=True), ToyModel(), train_dl)
    assert trainer.amp_dtype is None and not trainer.grad_scaler.is_enabled()
    assert "ignored, training in float32" in caplog.text
    with pytest.raises(ValueError, match="one of --use-fp16"):
        make_config(tmp_path, use_fp16=True, use_bf16=True).validate()


def test_running_average_matches_weighted_snapshots(tmp_path):
    """model_avg = sum over update points of (b_i - b_{i-1}) * model_{b_i} / b_end."""
    snapshots = {}

    def record(trainer):  # runs before batch b: the model holds the state after b-1
        b = trainer.params["batch_idx_train"]
        snapshots[b - 1] = {k: v.double().clone() for k, v in trainer.model.state_dict().items()}

    trainer = train(make_config(tmp_path, num_epochs=1, average_period=3, save_every_n=0,
                                valid_interval=0), batch_hooks=[record])
    n = trainer.params["batch_idx_train"]
    snapshots[n] = {k: v.double() for k, v in trainer.model.state_dict().items()}
    points = [b for b in range(3, n + 1, 3)] + ([n] if n % 3 else [])
    avg = load_checkpoint(tmp_path / "epoch-1.pt")["model_avg"]
    key = "output.weight"
    expected = sum((b - prev) * snapshots[b][key] for prev, b in zip([0] + points[:-1], points)) / n
    torch.testing.assert_close(avg[key].double(), expected, rtol=0, atol=1e-6)


def test_tensorboard_and_tri_stage(tmp_path):
    trainer = train(make_config(tmp_path, num_epochs=1, tensorboard=True), optimizer="adamw", lr=1e-2,
                    scheduler="tri_stage")
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    # tri-stage: after 7 of 7 steps the lr has decayed to final_lr_scale * base.
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(1e-2 * 0.05)


@pytest.mark.gpu
@pytest.mark.parametrize("flag", ["use_fp16", "use_bf16"])
def test_amp_on_cuda(tmp_path, flag):
    from speechadapt.training.dist import setup_dist

    train_dl, valid_dl = lhotse_loaders()
    torch.manual_seed(0)
    trainer = make_trainer(make_config(tmp_path, num_epochs=1, **{flag: True}), ToyModel(), train_dl,
                           valid_dl, dist_info=setup_dist())
    trainer.fit()
    assert trainer.amp_dtype == (torch.float16 if flag == "use_fp16" else torch.bfloat16)
    assert trainer.grad_scaler.is_enabled() == (flag == "use_fp16")
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    saved = torch.load(tmp_path / "epoch-1.pt", weights_only=True)
    assert (saved["grad_scaler"] is not None) == (flag == "use_fp16")


def test_an_epoch_without_batches_is_an_error_not_a_silent_no_op(tmp_path):
    trainer = make_trainer(make_config(tmp_path), ToyModel(), [])
    with pytest.raises(ValueError, match="yielded no batch.*--drop-last"):
        trainer.fit()
