"""Test-time adaptation: the SUTA loss against its formula, episodic restore, continual
reset rules, ZO-TTA through the optimiser registry (frozen front end computed once),
and the bad inputs of the issue (too short, non-finite, not a CTC model)."""

import math

import pytest
import torch

from speechadapt.adapt import tta
from speechadapt.adapt.tta import TestTimeAdapter, TtaOptions, suta_loss, tta_parameters
from speechadapt.data.batch import SpeechBatch
from speechadapt.models.ctc import ZipformerCtc
from speechadapt.models.zipformer import get_preset
from speechadapt.training.optim import OptimizerConfig

torch.set_num_threads(1)
FO = OptimizerConfig(optimizer="adamw", base_lr=1e-2)
ZO = OptimizerConfig(optimizer="zo-asr", zo_num_queries=2, base_lr=1e-2, zo_eps=1e-3, zo_seed=3)


def formula(logits, blank=0, tau=2.5, em=0.3, reweight=True, non_blank=True):
    """The SUTA loss written out for one utterance, frame by frame (no batching tricks)."""
    x = logits[0].double()
    p = torch.softmax(x / tau, -1)
    h = torch.stack([-(row * row.log()).sum() for row in p])
    keep = [t for t in range(len(x)) if int(x[t].argmax()) != blank] if non_blank else list(range(len(x)))
    e = sum(h[t] for t in keep) / len(keep) if keep else torch.tensor(0.0, dtype=torch.double)
    w = (1 + torch.exp(-h)) if reweight else torch.ones(len(x), dtype=torch.double)
    w = w * len(x) / w.sum()
    c = sum(w[t] * torch.outer(p[t], p[t]) for t in range(len(x)))
    c = c / c.sum(0, keepdim=True)
    mcc = (c.sum() - torch.trace(c)) / x.shape[-1]
    return em * e + (1 - em) * mcc


@pytest.mark.parametrize("reweight,non_blank,em", [(True, True, 0.3), (False, True, 0.5), (True, False, 1.0),
                                                   (False, False, 0.0)])
def test_suta_loss_matches_the_formula(reweight, non_blank, em):
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(1, 23, 7, generator=g)
    logits[0, :8, 0] += 6  # some blank frames
    got = suta_loss(logits, 0, 2.5, em, reweight, non_blank)
    assert torch.allclose(got.double(), formula(logits, 0, 2.5, em, reweight, non_blank), atol=1e-5)


def test_suta_loss_pools_utterances_leaves_padding_out_and_handles_all_blank():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(1, 10, 5, generator=g), torch.randn(1, 6, 5, generator=g)
    padded = torch.zeros(2, 10, 5)
    padded[0], padded[1, :6] = a[0], b[0]
    padded[1, 6:] = 100.0  # garbage in the padding must not count
    pooled = suta_loss(padded, lengths=torch.tensor([10, 6]))
    assert torch.allclose(pooled, suta_loss(torch.cat([a, b], 1)), atol=1e-6)
    blank = torch.zeros(1, 9, 5)
    blank[..., 0] = 5.0
    loss = suta_loss(blank, em_coef=1.0)  # no non-blank frame: no entropy term, not NaN
    assert torch.isfinite(loss) and float(loss) == 0.0
    with pytest.raises(ValueError, match="em_coef"):
        suta_loss(blank, em_coef=1.5)


class Words:
    vocab_size = 30
    model_file = "ids"

    def encode(self, texts):
        return [[int(t) for t in s.split()] for s in texts]

    def decode(self, ids):
        return " ".join(f"w{i}" for i in ids)

    def unknown_characters(self, text):
        return set()


def zipformer():
    torch.manual_seed(0)
    return ZipformerCtc(get_preset("tiny", regularize=False), 30, tokenizer=Words()).eval()


def utterances(n=3, frames=(90, 70, 80)):
    g = torch.Generator().manual_seed(5)
    return [SpeechBatch(torch.randn(1, frames[i % len(frames)], 80, generator=g),
                        torch.tensor([frames[i % len(frames)]]), ["1 2"], [f"u{i}"], [0.9]) for i in range(n)]


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_suta_selects_every_norm_of_the_zipformer_and_nothing_is_an_error():
    model = zipformer()
    tuned = tta_parameters(model)
    assert tuned and all("norm" in n for n, _ in tuned)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {n for n, _ in tuned}
    assert any(n.startswith("encoder_embed.out_norm") for n, _ in tuned)
    with pytest.raises(ValueError, match="matched none"):
        tta_parameters(model, "no_such_parameter")
    with pytest.raises(ValueError, match="zero selected parameters"):
        TestTimeAdapter(model, [], FO, TtaOptions(steps=3))


def test_episodic_restores_bit_identically_and_each_utterance_is_adapted_alone():
    model = zipformer()
    source = snapshot(model)
    adapter = TestTimeAdapter(model, tta_parameters(model), FO, TtaOptions(steps=3))
    texts = []
    for utt in utterances(3):
        texts.append(adapter.adapt_and_decode(utt)[0])
        assert not same(snapshot(model), source)  # it did adapt
        adapter.restore()
        assert same(snapshot(model), source)  # bit-identical after the restore
        assert adapter.optimizer.state_dict()["state"] == {}  # and AdamW starts afresh
    assert adapter.counts["adapted"] == 3 and adapter.counts["steps"] == 9 and adapter.counts["backwards"] == 9
    # the third utterance alone, by a fresh adapter, gives the same transcript: no carry-over
    fresh = TestTimeAdapter(model, tta_parameters(model), FO, TtaOptions(steps=3))
    assert fresh.adapt_and_decode(utterances(3)[2])[0] == texts[2]


def test_continual_carries_weights_over_and_resets_by_its_rules():
    model = zipformer()
    utts = utterances(5)
    episodic = TestTimeAdapter(model, tta_parameters(model), FO, TtaOptions(steps=2))
    episodic.adapt_and_decode(utts[0])
    episodic.adapt_and_decode(utts[1])
    after_episodic = snapshot(model)
    episodic.restore()
    continual = TestTimeAdapter(model, tta_parameters(model), FO, TtaOptions(steps=2, mode="continual"))
    continual.adapt_and_decode(utts[0])
    continual.adapt_and_decode(utts[1])
    assert not same(snapshot(model), after_episodic)  # the second started from the first's weights
    assert continual.counts["resets"] == 0
    continual.restore()
    every = TestTimeAdapter(model, tta_parameters(model), FO, TtaOptions(steps=2, mode="continual", reset_every=2))
    logs = [every.adapt_and_decode(u)[1] for u in utts]
    assert [log.reset for log in logs] == [False, False, True, False, True]
    every.restore()
    # a threshold so low that every utterance after the first looks drifted
    touchy = TestTimeAdapter(model, tta_parameters(model), FO,
                             TtaOptions(steps=2, mode="continual", reset_factor=1e-6))
    logs = [touchy.adapt_and_decode(u)[1] for u in utts]
    assert [log.reset for log in logs] == [False, True, True, True, True] and touchy.counts["resets"] == 4
    assert touchy.counts["steps"] == 2 * 5 + 4  # the first step is retaken after a reset
    with pytest.raises(ValueError, match="continual"):
        TtaOptions(reset_every=3).validate()


def test_zero_order_tta_goes_through_the_registry_and_runs_the_front_end_once():
    model = zipformer()
    source = snapshot(model)
    calls = []
    model.encoder_embed.conv.register_forward_hook(lambda *a: calls.append(1))
    adapter = TestTimeAdapter(model, tta_parameters(model), ZO, TtaOptions(steps=3))
    assert adapter.zeroth_order and type(adapter.optimizer).__name__ == "ZOOptimizer"
    adapter.adapt_and_decode(utterances(1)[0])
    assert adapter.counts["forwards"] == 3 * 2 * 2 and adapter.counts["backwards"] == 0
    assert len(calls) == 2  # once for the 12 forwards of the 3 steps, once for the final decoding
    changed = {k for k, v in snapshot(model).items() if not torch.equal(v, source[k])}
    assert changed and all("norm" in k for k in changed)
    adapter.restore()
    assert same(snapshot(model), source)


def test_batched_zo_queries_give_the_same_update_through_the_suta_loss():
    results = []
    for batched in (False, True):
        model = zipformer()
        config = OptimizerConfig(optimizer="zo-asr", zo_num_queries=2, base_lr=1e-2, zo_seed=3,
                                 zo_batched_queries=batched)
        adapter = TestTimeAdapter(model, tta_parameters(model), config, TtaOptions(steps=2))
        adapter.adapt_and_decode(utterances(1)[0])
        results.append(snapshot(model))
    # (L+ - L-) / 2 eps magnifies float32 rounding of the batched forward: ~1e-6 on an
    # update of ~1e-3, so the bound sits 100x below the update itself
    assert all(torch.allclose(results[0][k], results[1][k], atol=1e-5) for k in results[0])


def test_bad_input_short_utterance_non_finite_loss_and_a_model_without_ctc(monkeypatch):
    model = zipformer()
    adapter = TestTimeAdapter(model, tta_parameters(model), FO, TtaOptions(steps=2))
    short = SpeechBatch(torch.randn(1, 5, 80), torch.tensor([5]), ["1"], ["tiny"], [0.05])
    text, log = adapter.adapt_and_decode(short)
    assert text == "" and log.status == "short" and adapter.counts["short"] == 1 and adapter.counts["steps"] == 0
    utt = utterances(1)[0]
    unadapted = TestTimeAdapter(model, tta_parameters(model), FO, TtaOptions(steps=0)).adapt_and_decode(utt)[0]
    source = snapshot(model)
    monkeypatch.setattr(tta, "suta_loss", lambda *a, **k: torch.tensor(math.nan, requires_grad=True))
    text, log = adapter.adapt_and_decode(utt)
    assert log.status == "non-finite" and adapter.counts["non_finite"] == 1
    assert text == unadapted and same(snapshot(model), source)  # restored, decoded as the source would

    class NotCtc(torch.nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ValueError, match="CTC"):
        TestTimeAdapter(NotCtc(), [], FO, TtaOptions(steps=0))
