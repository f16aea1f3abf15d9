"""Zipformer training behaviour: schedules, regulariser switch, a toy CTC task, causal mode."""

import math

import pytest
import torch

from speechadapt.models.ctc import ZipformerCtc
from speechadapt.models.zipformer import (
    ScheduledFloat,
    ZipformerEncoder,
    get_preset,
    set_batch_count,
)


def _schedules(model):
    return [m for m in model.modules() if isinstance(m, ScheduledFloat)]


def _layer(model):
    return model.encoder.encoders[0].layers[0]


def test_scheduled_float_interpolates_and_uses_default_in_eval():
    rate = ScheduledFloat((0.0, 0.5), (100.0, 0.1), default=0.0)
    rate.train()
    assert float(rate) == 0.0  # no batch count yet: icefall's default
    rate.batch_count = 50.0
    assert math.isclose(float(rate), 0.3)
    rate.batch_count = 1e9
    assert math.isclose(float(rate), 0.1)
    rate.eval()
    assert float(rate) == 0.0


def test_schedule_scale_walks_schedules_faster():
    slow = ZipformerEncoder(get_preset("tiny"))
    fast = ZipformerEncoder(get_preset("tiny", schedule_scale=10.0))
    for model in (slow, fast):
        model.train()
        set_batch_count(model, 2000)
    # Layer-skip of the first layer: 0.5 -> 0.035 over batches ~571..1143 (warm-up 4000).
    # Dropout: 0.3 at 0 -> 0.1 at 20000.
    dropout_slow = float(_layer(slow).feed_forward1.out_proj.dropout_p)
    dropout_fast = float(_layer(fast).feed_forward1.out_proj.dropout_p)
    assert math.isclose(dropout_slow, 0.3 - 0.2 * 2000 / 20000)
    assert math.isclose(dropout_fast, 0.1)
    assert math.isclose(float(_layer(fast).attention_skip_rate), 0.0)
    assert float(_layer(slow).attention_skip_rate) > 0.05
    counts = {m.batch_count for m in _schedules(fast)}
    assert counts == {20000.0}
    # A CTC model wrapping the encoder gets the same treatment.
    ctc = ZipformerCtc(get_preset("tiny", schedule_scale=4.0), vocab_size=5)
    set_batch_count(ctc, 100)
    assert {m.batch_count for m in _schedules(ctc)} == {400.0}


def test_regularize_false_makes_training_forward_equal_eval():
    torch.manual_seed(0)
    model = ZipformerEncoder(get_preset("tiny", regularize=False))
    x, x_lens = torch.randn(2, 120, 80), torch.tensor([120, 97])
    set_batch_count(model, 0)  # the most aggressive point of every schedule
    model.train()
    train_out, _ = model(x, x_lens)
    model.eval()
    with torch.no_grad():
        eval_out, _ = model(x, x_lens)
    assert torch.allclose(train_out, eval_out, atol=1e-6)
    model.set_regularize(True)
    model.train()
    torch.manual_seed(1)
    noisy_out, _ = model(x, x_lens)
    assert not torch.allclose(noisy_out, eval_out, atol=1e-4)


def _toy_batch(generator, num_tokens=4, batch=6, segment=16):
    """Each token is a 16-frame segment around a token-specific mean; target = tokens."""
    means = torch.randn(num_tokens + 1, 80, generator=generator) * 2.0
    targets, feats = [], []
    for _ in range(batch):
        seq = torch.randint(1, num_tokens + 1, (4,), generator=generator).tolist()
        targets.append(seq)
        frames = [means[t].expand(segment, 80) for t in seq] + [means[0].expand(12, 80)]
        feats.append(torch.cat(frames) + 0.3 * torch.randn(segment * 4 + 12, 80,
                                                          generator=generator))
    x = torch.stack(feats)
    return x, torch.full((batch,), x.shape[1]), targets


def test_training_gradients_finite_and_loss_falls():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    x, x_lens, targets = _toy_batch(generator)
    model = ZipformerCtc(get_preset("tiny", schedule_scale=50.0), vocab_size=5)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        set_batch_count(model, step)
        loss, frames = model.ctc_loss(x, x_lens, targets)
        optimizer.zero_grad()
        (loss / frames).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        optimizer.step()
        losses.append(loss.item() / frames)
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_ctc_loss_rejects_bad_targets():
    model = ZipformerCtc(get_preset("tiny"), vocab_size=5)
    x, x_lens = torch.randn(1, 60, 80), torch.tensor([60])
    with pytest.raises(ValueError, match="not the blank"):
        model.ctc_loss(x, x_lens, [[0, 1]])
    with pytest.raises(ValueError, match="targets for a batch"):
        model.ctc_loss(x, x_lens, [[1], [2]])


def test_causal_chunks_do_not_see_the_future():
    torch.manual_seed(0)
    config = get_preset("tiny", causal=True, chunk_size=(32,), left_context_frames=(64,))
    model = ZipformerEncoder(config).eval()
    state = model.state_dict()
    assert "encoder.encoders.0.layers.0.conv_module1.depthwise_conv.chunkwise_conv_scale" in state
    x = torch.randn(1, 400, 80)
    changed = x.clone()
    changed[:, 160:] = torch.randn(1, 240, 80)
    with torch.no_grad():
        out, _ = model(x, torch.tensor([400]))
        out_changed, _ = model(changed, torch.tensor([400]))
    # Raw frames >= 160 reach embed frames >= 73 (front-end look-ahead), i.e. chunk 2
    # onwards: output frames 0..31 (chunks 0-1 at half rate) must not move.
    assert torch.allclose(out[:, :32], out_changed[:, :32], atol=1e-6)
    assert not torch.allclose(out[:, 40:], out_changed[:, 40:], atol=1e-3)
