"""FSDP (--fsdp true) with 2 gloo ranks on the CPU: the same updates as DDP on the same
batches, one consolidated checkpoint the averaging tool reads, an exact resume."""

import pytest
import torch

from speechadapt.training.checkpoint import average_checkpoints
from speechadapt.training.dist import cleanup_dist, launch, setup_dist
from speechadapt.training.fsdp import check_fsdp_supported
from speechadapt.training.loop import Trainer
from speechadapt.training.optim import OptimizerConfig
from speechadapt.training.options import TrainingConfig
from speechadapt.training.schedulers import SchedulerConfig
from speechadapt.training.toy import ToyModel, collate_cuts, make_toy_cuts


def make_batches(num_cuts, per_batch):
    cuts = list(make_toy_cuts(num_cuts))
    return [collate_cuts(cuts[i:i + per_batch]) for i in range(0, num_cuts, per_batch)]


def worker(rank, world_size, exp_dir, use_fsdp, num_epochs, start_epoch=1):
    torch.set_num_threads(1)
    dist_info = setup_dist(rank, world_size)
    # 3 validation batches: rank 0 gets 2, rank 1 one (FSDP validates in lockstep).
    train_batches, valid_batches = make_batches(16, 2), make_batches(9, 3)
    config = TrainingConfig(exp_dir=str(exp_dir), num_epochs=num_epochs, start_epoch=start_epoch, save_every_n=3,
                            keep_last_k=0, average_period=2, valid_interval=0, log_interval=1, tensorboard=False,
                            seed=5, fsdp=use_fsdp, fsdp_units="Linear$")
    torch.manual_seed(0)
    trainer = Trainer(config, ToyModel(), train_batches[rank::world_size], valid_batches[rank::world_size],
                      dist_info, optimizer_config=OptimizerConfig(optimizer="adamw", base_lr=0.01, max_grad_norm=1.0),
                      scheduler_config=SchedulerConfig(scheduler="constant"))
    trainer.fit()
    if rank == 0:
        torch.save({"valid_loss": trainer.params["valid_loss"],
                    "sharded": type(trainer.model.encoder.weight).__name__}, exp_dir / "summary.pt")
    cleanup_dist()


def run(exp_dir, use_fsdp, num_epochs, start_epoch=1):
    launch(worker, 2, exp_dir, use_fsdp, num_epochs, start_epoch)
    return torch.load(exp_dir / "summary.pt", weights_only=True)


@pytest.fixture
def local_master(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "0")


def test_fsdp_matches_ddp_and_writes_one_consolidated_checkpoint(tmp_path, local_master):
    ddp = run(tmp_path / "ddp", False, 2)
    sharded = run(tmp_path / "fsdp", True, 2)
    assert sharded["sharded"] == "DTensor" and ddp["sharded"] == "Parameter"
    assert abs(ddp["valid_loss"] - sharded["valid_loss"]) < 1e-5  # every validation batch counted once
    a = torch.load(tmp_path / "ddp" / "epoch-2.pt", weights_only=True)
    b = torch.load(tmp_path / "fsdp" / "epoch-2.pt", weights_only=True)
    assert b["params"]["fsdp"] and a["batch_idx_train"] == b["batch_idx_train"] == 8
    for part in ("model", "model_avg"):
        assert a[part].keys() == b[part].keys()
        for key, value in a[part].items():
            assert type(b[part][key]) is torch.Tensor  # gathered, not DTensor shards
            torch.testing.assert_close(b[part][key], value, rtol=0, atol=1e-6, msg=f"{part}.{key}")
    assert set(b["optimizer"]["fsdp_full_state"]["state"]) == set(a["model"]) - {"num_updates"}
    # The averaging tool reads the FSDP run's files like any other.
    averaged = average_checkpoints([tmp_path / "fsdp" / "epoch-1.pt", tmp_path / "fsdp" / "epoch-2.pt"])
    first = torch.load(tmp_path / "fsdp" / "epoch-1.pt", weights_only=True)["model"]
    torch.testing.assert_close(averaged["output.weight"], (first["output.weight"] + b["model"]["output.weight"]) / 2)


def test_fsdp_resume_from_a_mid_epoch_checkpoint_is_exact(tmp_path, local_master):
    run(tmp_path / "straight", True, 2)
    run(tmp_path / "resumed", True, 1)
    # checkpoint-3.pt is mid-epoch 1 (4 batches an epoch); resume from there to the end.
    for late in ("epoch-1.pt", "checkpoint-6.pt"):
        (tmp_path / "resumed" / late).unlink(missing_ok=True)
    run(tmp_path / "resumed", True, 2, start_epoch="auto")
    a = torch.load(tmp_path / "straight" / "epoch-2.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "epoch-2.pt", weights_only=True)
    for part in ("model", "model_avg"):
        for key, value in a[part].items():
            assert torch.equal(b[part][key], value), f"{part}.{key}"
    for name, state in a["optimizer"]["fsdp_full_state"]["state"].items():
        for key, value in state.items():
            assert torch.equal(b["optimizer"]["fsdp_full_state"]["state"][name][key], value), (name, key)


def test_fsdp_refuses_what_it_does_not_support():
    with pytest.raises(ValueError, match="2 or more processes"):
        check_fsdp_supported(1, "adamw", False, False, 1)
    with pytest.raises(ValueError, match="zeroth-order"):
        check_fsdp_supported(2, "mezo", True, False, 1)
    with pytest.raises(ValueError, match="scaled_adam: FSDP runs adamw or sgd"):
        check_fsdp_supported(2, "scaled_adam", False, False, 1)
    with pytest.raises(ValueError, match="--use-bf16"):
        check_fsdp_supported(2, "adamw", False, True, 1)
    with pytest.raises(ValueError, match="accum-grad"):
        check_fsdp_supported(2, "adamw", False, False, 2)


TEXTS = ["turn on the lights", "call alice", "play some music now", "open the door", "set an alarm"]


def llm_asr_worker(rank, world_size, llm_dir, exp_dir, use_fsdp):
    """The target case: LoRA on a Qwen2 (one unit per decoder layer), frozen encoder, projector."""
    from speechadapt.data.batch import SpeechBatch
    from speechadapt.models.llm_asr import LlmAsrConfig, LlmAsrModel
    from speechadapt.models.llm_asr_build import load_llm_for_asr
    from speechadapt.models.zipformer import ZipformerEncoder, get_preset

    torch.set_num_threads(1)
    dist_info = setup_dist(rank, world_size)
    torch.manual_seed(0)
    encoder = ZipformerEncoder(get_preset("tiny"))
    llm, tokenizer = load_llm_for_asr(llm_dir)
    model = LlmAsrModel([encoder], llm, tokenizer, LlmAsrConfig(lora_r=4, lora_alpha=8))
    g = torch.Generator().manual_seed(3)
    batches = [SpeechBatch(torch.randn(2, 90, 80, generator=g), torch.tensor([90, 60 + 5 * i]),
                           [TEXTS[i % 5], TEXTS[(i + 2) % 5]], [f"u{i}-0", f"u{i}-1"], [0.9, 0.6]) for i in range(4)]
    config = TrainingConfig(exp_dir=str(exp_dir), num_epochs=1, save_every_n=0, average_period=1, valid_interval=0,
                            tensorboard=False, save_trainable_only=True, fsdp=use_fsdp)
    trainer = Trainer(config, model, batches[rank::world_size], None, dist_info,
                      optimizer_config=OptimizerConfig(optimizer="adamw", base_lr=5e-3),
                      scheduler_config=SchedulerConfig(scheduler="constant"))
    if use_fsdp:
        units = [type(m).__name__ for n, m in model.named_modules() if type(m).__name__.startswith("FSDP") and n]
        assert units.count("FSDPQwen2DecoderLayer") == llm.config.num_hidden_layers, units  # one per layer
        assert "FSDPZipformer2EncoderLayer" in units  # the frozen encoder's layers are split too
    trainer.fit()
    cleanup_dist()


def test_fsdp_llm_asr_with_lora_matches_ddp(tmp_path, local_master):
    from speechadapt.models.hf.fixtures import make_tiny_qwen2

    llm_dir = make_tiny_qwen2(tmp_path / "qwen2", TEXTS, tokenizer_vocab_size=300, hidden_size=64,
                              intermediate_size=128)
    for mode in ("ddp", "fsdp"):
        launch(llm_asr_worker, 2, llm_dir, tmp_path / mode, mode == "fsdp")
    a = torch.load(tmp_path / "ddp" / "epoch-1.pt", weights_only=True)
    b = torch.load(tmp_path / "fsdp" / "epoch-1.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys() and any("lora_B" in k for k in b["model"])
    assert not any(k.startswith("encoders.") for k in b["model"])  # adapter-only, as without FSDP
    initial_b = [k for k in a["model"] if "lora_B" in k]
    assert any(a["model"][k].abs().sum() > 0 for k in initial_b)  # LoRA B left zero-init: it trained
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
