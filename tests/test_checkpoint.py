"""Checkpoint files: averaging formulas, the averaging CLI, crash safety, icefall
files, trainable-only saving."""

import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from speechadapt.bin import average_checkpoints as cli
from speechadapt.training.checkpoint import (average_checkpoints, average_checkpoints_with_averaged_model,
                                             find_checkpoints, load_checkpoint, load_model_state,
                                             remove_checkpoints, save_checkpoint, update_averaged_model)
from speechadapt.training.toy import ToyModel
from speechadapt.utils.safe_load import safe_torch_load


def write(path, model=None, model_avg=None, batch_idx_train=0, **params):
    torch.save({"model": model, "model_avg": model_avg, "batch_idx_train": batch_idx_train,
                "params": dict(params, batch_idx_train=batch_idx_train)}, path)
    return path


def test_average_checkpoints_plain_mean_and_last_integers(tmp_path):
    files = [write(tmp_path / f"epoch-{i}.pt", {"w": torch.full((2, 3), float(i)), "n": torch.tensor(10 * i)})
             for i in (1, 2, 6)]
    avg = average_checkpoints(files)
    torch.testing.assert_close(avg["w"], torch.full((2, 3), 3.0))
    assert avg["w"].dtype == torch.float32
    assert avg["n"].item() == 60  # integer tensors from the last file


def test_average_with_averaged_model_formula(tmp_path):
    start = write(tmp_path / "s.pt", {}, {"w": torch.tensor([1.0, 2.0]), "k": torch.tensor(3)}, batch_idx_train=100)
    end = write(tmp_path / "e.pt", {}, {"w": torch.tensor([3.0, 5.0]), "k": torch.tensor(4)}, batch_idx_train=300)
    avg = average_checkpoints_with_averaged_model(start, end)
    # (avg_end * b_end - avg_start * b_start) / (b_end - b_start)
    torch.testing.assert_close(avg["w"], torch.tensor([(900 - 100) / 200, (1500 - 200) / 200]))
    assert avg["k"].item() == 4
    with pytest.raises(ValueError, match="must come after"):
        average_checkpoints_with_averaged_model(end, start)


def test_update_averaged_model_is_a_running_mean():
    avg = {"w": torch.zeros(3, dtype=torch.float64), "step": torch.tensor(0)}
    models = [torch.randn(3) for _ in range(4)]
    for b, m in enumerate(models, start=1):
        update_averaged_model(avg, {"w": m, "step": torch.tensor(b)}, 1.0 / b)
    torch.testing.assert_close(avg["w"], torch.stack(models).double().mean(0))
    assert avg["step"].item() == 0  # integer entries are not averaged


def test_crash_during_save_keeps_previous_file(tmp_path, monkeypatch):
    model = ToyModel()
    target = tmp_path / "epoch-2.pt"
    save_checkpoint(target, model, {"batch_idx_train": 5})
    good = safe_torch_load(target)

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with torch.no_grad():
        model.output.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(target, model, {"batch_idx_train": 9})
    monkeypatch.undo()
    again = torch.load(target, weights_only=True)
    assert again["batch_idx_train"] == 5
    torch.testing.assert_close(again["model"]["output.weight"], good["model"]["output.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-2.pt"]  # no temp file left


def test_trainable_only_save_and_merge(tmp_path):
    torch.manual_seed(0)
    model = ToyModel()
    model.encoder.requires_grad_(False)
    save_checkpoint(tmp_path / "a.pt", model, {"trainable_only": True}, trainable_only=True)
    saved = torch.load(tmp_path / "a.pt", weights_only=True)["model"]
    assert set(saved) == {"norm.weight", "norm.bias", "output.weight", "output.bias", "num_updates"}
    torch.manual_seed(1)
    base = ToyModel()
    encoder_before = base.encoder.weight.clone()
    load_checkpoint(tmp_path / "a.pt", base)
    assert torch.equal(base.output.weight, model.output.weight)
    assert torch.equal(base.encoder.weight, encoder_before)  # frozen part kept from the base model
    with pytest.raises(KeyError, match="lacks model keys"):
        load_model_state(ToyModel(), saved)
    wrong = ToyModel(hidden=8)
    with pytest.raises(ValueError, match="shape mismatch for norm.weight"):
        load_model_state(wrong, saved, partial=True)


def test_find_and_remove_checkpoints(tmp_path):
    for b in (5, 10, 15, 20):
        (tmp_path / f"checkpoint-{b}.pt").write_bytes(b"")
    (tmp_path / "checkpoint-x.pt").write_bytes(b"")
    assert [p.name for p in find_checkpoints(tmp_path, iteration=15)] == ["checkpoint-15.pt", "checkpoint-10.pt", "checkpoint-5.pt"]
    remove_checkpoints(tmp_path, 2)
    assert [p.name for p in find_checkpoints(tmp_path)] == ["checkpoint-20.pt", "checkpoint-15.pt"]


def _fake_icefall_file(path):
    """A file like icefall's: params is an icefall.utils.AttributeDict holding a Path."""
    icefall = types.ModuleType("icefall")
    utils = types.ModuleType("icefall.utils")
    AttributeDict = type("AttributeDict", (dict,), {"__module__": "icefall.utils"})
    utils.AttributeDict = AttributeDict
    icefall.utils = utils
    sys.modules["icefall"], sys.modules["icefall.utils"] = icefall, utils
    try:
        params = AttributeDict(exp_dir=Path("/x/exp"), batch_idx_train=40, best_valid_loss=0.5)
        torch.save({"model": {"w": torch.ones(2)}, "model_avg": {"w": torch.ones(2) * 3},
                    "batch_idx_train": 40, "params": params}, path)
    finally:
        del sys.modules["icefall"], sys.modules["icefall.utils"]
    return path


def test_safe_load_reads_icefall_files_and_rejects_others(tmp_path):
    path = _fake_icefall_file(tmp_path / "epoch-4.pt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    loaded = safe_torch_load(path)
    assert type(loaded["params"]) is dict and loaded["params"]["exp_dir"] == "/x/exp"
    assert load_checkpoint(path)["params"]["batch_idx_train"] == 40
    torch.save({"bad": nn.Linear(1, 1)}, tmp_path / "module.pt")
    with pytest.raises(pickle.UnpicklingError):
        safe_torch_load(tmp_path / "module.pt")
    with pytest.raises(FileNotFoundError):
        safe_torch_load(tmp_path / "nope.pt")


@pytest.fixture
def exp_dir(tmp_path):
    valid = {1: 0.9, 2: 0.5, 3: 0.7, 4: 0.6}
    for e in range(1, 5):
        write(tmp_path / f"epoch-{e}.pt", {"w": torch.full((2,), float(e))},
              {"w": torch.full((2,), e * 10.0)}, batch_idx_train=e * 100, valid_loss=valid[e])
    for b in (50, 100, 150):
        write(tmp_path / f"checkpoint-{b}.pt", {"w": torch.full((2,), b / 10)},
              {"w": torch.full((2,), float(b))}, batch_idx_train=b)
    return tmp_path


def test_cli_epoch_avg(exp_dir):
    out = cli.main(["--exp-dir", str(exp_dir), "--epoch", "4", "--avg", "2"])
    assert out.name == "epoch-4-avg-2.pt"
    torch.testing.assert_close(torch.load(out, weights_only=True)["model"]["w"], torch.full((2,), 3.5))


def test_cli_use_averaged_model(exp_dir):
    out = cli.main(["--exp-dir", str(exp_dir), "--epoch", "4", "--avg", "3", "--use-averaged-model", "true"])
    # (40 * 400 - 10 * 100) / 300
    torch.testing.assert_close(torch.load(out, weights_only=True)["model"]["w"], torch.full((2,), 50.0))
    # from the start of training (S = 0) the formula is model_avg of epoch 4 itself
    out = cli.main(["--exp-dir", str(exp_dir), "--epoch", "4", "--avg", "4", "--use-averaged-model", "true"])
    torch.testing.assert_close(torch.load(out, weights_only=True)["model"]["w"], torch.full((2,), 40.0))
    with pytest.raises(ValueError, match="epoch - avg >= 0"):
        cli.main(["--exp-dir", str(exp_dir), "--epoch", "4", "--avg", "5", "--use-averaged-model", "true"])


def test_cli_iter_and_best_valid(exp_dir):
    out = cli.main(["--exp-dir", str(exp_dir), "--iter", "150", "--avg", "2"])
    assert out.name == "iter-150-avg-2.pt"
    torch.testing.assert_close(torch.load(out, weights_only=True)["model"]["w"], torch.full((2,), 12.5))
    out = cli.main(["--exp-dir", str(exp_dir), "--iter", "150", "--avg", "2", "--use-averaged-model", "true"])
    # (150 * 150 - 50 * 50) / 100
    torch.testing.assert_close(torch.load(out, weights_only=True)["model"]["w"], torch.full((2,), 200.0))
    out = cli.main(["--exp-dir", str(exp_dir), "--best-valid", "2"])
    assert out.name == "best-valid-2.pt"  # epochs 2 and 4
    torch.testing.assert_close(torch.load(out, weights_only=True)["model"]["w"], torch.full((2,), 3.0))
    with pytest.raises(FileNotFoundError, match="epoch-0.pt|missing"):
        cli.main(["--exp-dir", str(exp_dir), "--epoch", "6", "--avg", "2"])


def test_cli_reads_icefall_files(tmp_path):
    _fake_icefall_file(tmp_path / "epoch-4.pt")
    out = cli.main(["--exp-dir", str(tmp_path), "--epoch", "4", "--avg", "1"])
    torch.testing.assert_close(torch.load(out, weights_only=True)["model"]["w"], torch.ones(2))
