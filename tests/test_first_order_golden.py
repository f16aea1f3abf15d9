"""The same batches give the same first-order results as before the one-step redesign.

``data/first_order_golden.pt`` was written by the Trainer of commit 947d332 (where the
loop called ``loss.backward()`` itself) on exactly these runs: the toy model with
ScaledAdam + Eden (SpecAugment on, validation, averaging, checkpoints) and with AdamW
+ clipping at 0.05 (so clipping acts), and a tiny Zipformer-CTC trained on fixed
random batches with and without its warm-up regularisation. Each parameter is kept as
a fingerprint (float64 sum, sum of squares and four sampled values). The redesigned
loop stepped through ``optimizer.step(loss_fn)`` and reproduced them bit for bit on the
machine that wrote them. Bit equality holds on one CPU only: another SIMD path rounds
float32 differently (seen on an AVX-512 machine: 1e-6 relative on the toy runs, and a
few near-zero Zipformer biases, the downsampling weights, amplified to ~1% of their
scale over 8 ScaledAdam steps, while the median key moved 1e-7). So the checks are
tolerances far below what any change to the loop does (a changed step moves the median
key by ~4% of its scale).
"""

from pathlib import Path

import pytest
import torch

from speechadapt.data.batch import SpeechBatch
from speechadapt.models.ctc import ZipformerCtc
from speechadapt.models.zipformer import get_preset
from speechadapt.training.loop import Trainer
from speechadapt.training.optim import OptimizerConfig
from speechadapt.training.options import TrainingConfig
from speechadapt.training.schedulers import SchedulerConfig
from speechadapt.training.toy import ToyModel, make_spec_augment, make_toy_cuts, make_toy_dataloader

GOLDEN = torch.load(Path(__file__).parent / "data" / "first_order_golden.pt", weights_only=True)


def fingerprint(state):
    out = {}
    for k, v in state.items():
        if not v.is_floating_point():
            out[k] = v.clone()
            continue
        flat = v.detach().reshape(-1).double()
        n = flat.numel()
        idx = torch.tensor(sorted({0, n // 3, (2 * n) // 3, n - 1}))
        out[k] = torch.cat([flat.sum().view(1), flat.pow(2).sum().view(1), flat[idx]])
    return out


def assert_same(name, state, every_key=1e-5, most_keys=None, share=0.97):
    """Every floating key within ``every_key`` of its scale (its largest fingerprint value);
    with ``most_keys``, at least ``share`` of the keys also within that tighter bound."""
    expected = GOLDEN[name]["fingerprint"]
    got = fingerprint(state)
    assert set(got) == set(expected)
    errors = {}
    for key, value in expected.items():
        if not value.is_floating_point():
            assert torch.equal(got[key], value), f"{name}: {key} differs: {got[key]} vs {value}"
            continue
        errors[key] = ((got[key] - value).abs().max() / value.abs().max().clamp_min(1e-12)).item()
        assert errors[key] <= every_key, f"{name}: {key} differs by {errors[key]:.2e} of its scale: {got[key]} vs {value}"
    if most_keys is not None:
        close = sum(e <= most_keys for e in errors.values())
        assert close >= share * len(errors), f"{name}: only {close}/{len(errors)} keys within {most_keys:g}"


def assert_loss_same(trainer, name):
    assert abs(trainer.params["valid_loss"] - GOLDEN[name]["valid_loss"]) <= 1e-6 * abs(GOLDEN[name]["valid_loss"])


class WordIdTokenizer:
    """Transcripts of space-separated token ids (the golden batches' texts)."""

    vocab_size = 50
    model_file = "word-ids"

    def encode(self, texts):
        return [[int(t) for t in s.split()] for s in texts]

    def decode(self, ids):
        return " ".join(map(str, ids))


def toy_run(tmp_path, optimizer: OptimizerConfig, scheduler: SchedulerConfig):
    config = TrainingConfig(exp_dir=str(tmp_path), num_epochs=2, seed=7, save_every_n=5, keep_last_k=0,
                            average_period=3, valid_interval=4, log_interval=2, tensorboard=False)
    torch.manual_seed(0)
    trainer = Trainer(config, ToyModel(spec_augment=make_spec_augment()),
                      make_toy_dataloader(make_toy_cuts(24), 2.0, seed=3),
                      make_toy_dataloader(make_toy_cuts(6), 2.0, shuffle=False),
                      optimizer_config=optimizer, scheduler_config=scheduler)
    trainer.fit()
    return trainer


def test_toy_scaled_adam_eden_is_unchanged(tmp_path):
    trainer = toy_run(tmp_path, OptimizerConfig(base_lr=0.04), SchedulerConfig(warmup_batches=4))
    assert_same("toy_scaled_adam", trainer.model.state_dict())
    assert_loss_same(trainer, "toy_scaled_adam")


def test_toy_adamw_with_clipping_is_unchanged(tmp_path):
    trainer = toy_run(tmp_path, OptimizerConfig(optimizer="adamw", base_lr=1e-2, max_grad_norm=0.05),
                      SchedulerConfig(scheduler="constant"))
    assert_same("toy_adamw_clip", trainer.model.state_dict())
    assert_loss_same(trainer, "toy_adamw_clip")
    assert 0 < trainer.optimizer.last_grad_norm  # clipping saw real gradients


def zipformer_batches():
    g = torch.Generator().manual_seed(123)
    batches = []
    for _ in range(4):
        lens = torch.tensor([160, 131, 97])
        x = torch.randn(3, 160, 80, generator=g)
        texts = [" ".join(str(int(t)) for t in torch.randint(1, 50, (n,), generator=g)) for n in (9, 7, 5)]
        batches.append(SpeechBatch(x, lens, texts, ["a", "b", "c"], [1.6, 1.31, 0.97]))
    return batches


@pytest.mark.parametrize("regularize", [True, False])
def test_zipformer_ctc_training_is_unchanged(tmp_path, regularize):
    torch.manual_seed(42)
    model = ZipformerCtc(get_preset("tiny", regularize=regularize, schedule_scale=500.0), vocab_size=50,
                         tokenizer=WordIdTokenizer())
    config = TrainingConfig(exp_dir=str(tmp_path), num_epochs=2, seed=42, save_every_n=0, average_period=2,
                            valid_interval=0, log_interval=1, tensorboard=False)
    Trainer(config, model, zipformer_batches(), None, optimizer_config=OptimizerConfig(base_lr=0.04),
            scheduler_config=SchedulerConfig(warmup_batches=2)).fit()
    assert_same(f"zipformer_ctc_regularize_{regularize}", model.state_dict(), every_key=5e-2, most_keys=1e-4)
