"""Skeleton utilities: configs in checkpoints, atomic save, logging, str2bool, env info."""

import argparse
import logging
from dataclasses import dataclass, field
from typing import Optional, Tuple

import pytest
import torch

from speechadapt.utils import atomic_save, atomic_write_text, config_from_dict, config_to_dict, setup_logger, str2bool
from speechadapt.utils.env import get_env_info


@dataclass
class Inner:
    width: int = 4
    dims: Tuple[int, ...] = (1, 2)


@dataclass
class Outer:
    name: str = "tiny"
    dims: Tuple[int, ...] = (32, 48, 64)
    rate: float = 0.1
    maybe: Optional[Tuple[int, ...]] = None
    inner: Inner = field(default_factory=Inner)


def test_config_round_trips_through_weights_only_load(tmp_path):
    cfg = Outer(dims=(8, 16), maybe=(3,), inner=Inner(width=7, dims=(5, 6, 7)))
    torch.save({"params": config_to_dict(cfg)}, tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)
    back = config_from_dict(Outer, loaded["params"])
    assert back == cfg
    assert isinstance(back.dims, tuple) and isinstance(back.inner.dims, tuple)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown config keys \\['typo'\\]"):
        config_from_dict(Outer, {"name": "x", "typo": 1})


def test_atomic_save_keeps_old_file_when_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "epoch-1.pt"
    atomic_save({"w": torch.ones(3)}, path)

    real_save = torch.save

    def crash_mid_write(obj, f, *a, **kw):
        f.write(b"partial garbage")  # some bytes reach the temp file, then we die
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(RuntimeError, match="simulated crash"):
        atomic_save({"w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-1.pt"]  # no temp left behind


def test_atomic_write_text(tmp_path):
    p = atomic_write_text("hello\n", tmp_path / "sub" / "a.txt")
    assert p.read_text() == "hello\n"


def test_str2bool():
    assert str2bool("True") and str2bool("1") and str2bool("yes") and str2bool(True)
    assert not str2bool("false") and not str2bool("0") and not str2bool("No")
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("maybe")


def test_logger_writes_rank_file(tmp_path):
    path = setup_logger(tmp_path, "train", rank=1, world_size=2)
    logging.info("hello from rank one")
    assert path.parent == tmp_path / "log"
    assert path.name.startswith("log-train-") and path.name.endswith("-1")
    for h in logging.getLogger().handlers:
        h.flush()
    assert "hello from rank one" in path.read_text()
    setup_logger(None, "reset")


def test_env_info_is_plain_strings():
    info = get_env_info()
    assert info["torch_version"].startswith("2.")
    assert all(isinstance(v, str) for v in info.values())
