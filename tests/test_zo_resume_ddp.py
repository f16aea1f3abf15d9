"""ZO optimiser: exact resume from a state dict, and identical ranks under DDP (gloo)."""

import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from speechadapt.adapt.zo import ZOOptimizer
from speechadapt.training.dist import cleanup_dist, find_free_port, setup_dist

torch.set_num_threads(1)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 1))


def batch(step: int, rank: int = 0, world_size: int = 1, n: int = 32):
    """Batch of ``step``; with ranks, rank r holds rows r, r+W, ... of the full batch."""
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(n, 6, generator=gen)
    y = x.sum(dim=1, keepdim=True)
    return x[rank::world_size], y[rank::world_size]


def loss_fn_for(model, step, rank=0, world_size=1):
    x, y = batch(step, rank, world_size)
    return lambda grad_enabled: ((model(x) - y) ** 2).mean()


OPT_KW = [
    dict(num_queries=2, momentum=0.9, lr=1e-3),
    dict(num_queries=1, estimator="hizoo", lr=1e-2),
]


@pytest.mark.parametrize("kwargs", OPT_KW)
def test_state_dict_resume_is_exact(tmp_path, kwargs):
    straight = make_model()
    opt = ZOOptimizer(straight.parameters(), seed=11, **kwargs)
    for step in range(6):
        opt.step(loss_fn_for(straight, step))

    first = make_model()
    opt = ZOOptimizer(first.parameters(), seed=11, **kwargs)
    for step in range(3):
        opt.step(loss_fn_for(first, step))
    path = tmp_path / "ckpt.pt"
    torch.save({"model": first.state_dict(), "optimizer": opt.state_dict()}, path)

    ckpt = torch.load(path, weights_only=True)
    resumed = make_model()
    resumed.load_state_dict(ckpt["model"])
    opt = ZOOptimizer(resumed.parameters(), seed=999, **kwargs)  # the seed comes from the file
    opt.load_state_dict(ckpt["optimizer"])
    assert opt.num_steps == 3 and opt.seed == 11
    for step in range(3, 6):
        opt.step(loss_fn_for(resumed, step))
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_loading_a_state_dict_with_another_chunk_size_is_refused():
    model = make_model()
    state = ZOOptimizer(model.parameters(), lr=1e-3, chunk_size=64).state_dict()
    other = ZOOptimizer(model.parameters(), lr=1e-3, chunk_size=128)
    with pytest.raises(ValueError, match="chunk_size"):
        other.load_state_dict(state)
    with pytest.raises(KeyError, match="zo"):
        other.load_state_dict({"state": {}, "param_groups": []})


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    setup_dist(rank, world_size, master_port=port)
    torch.set_num_threads(1)
    try:
        model = make_model()
        opt = ZOOptimizer(model.parameters(), lr=1e-2, num_queries=2, seed=5)
        for step in range(4):
            opt.step(loss_fn_for(model, step, rank, world_size))
        try:
            ZOOptimizer(model.parameters(), lr=1e-2, seed=rank)  # ranks disagree on the seed
            refused = False
        except ValueError:
            refused = True
        torch.save(dict(model=model.state_dict(), refused=refused), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        cleanup_dist()


def test_ddp_ranks_stay_identical_and_match_one_process(tmp_path):
    port = find_free_port()
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    out0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    out1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert out0["refused"] and out1["refused"]
    rank0, rank1 = out0["model"], out1["model"]
    single = make_model()
    opt = ZOOptimizer(single.parameters(), lr=1e-2, num_queries=2, seed=5)
    for step in range(4):
        opt.step(loss_fn_for(single, step))
    initial = make_model().state_dict()
    for key, value in single.state_dict().items():
        assert torch.equal(rank0[key], rank1[key]), key
        # the mean of the two half-batch losses is the full-batch loss up to rounding, which
        # the ZO estimate divides by 2 eps (seen: 1.1e-5 on updates of up to 0.29)
        torch.testing.assert_close(rank0[key], value, rtol=1e-4, atol=1e-4)
    assert any(not torch.equal(rank0[k], initial[k]) for k in initial)
