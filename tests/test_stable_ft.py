"""Stable fine-tuning (Speech-FT) and the metric-driven learning rate (Marco-ASR) of the
fine-tuning entry point."""

import json

import pytest
import torch

from speechadapt.adapt.finetune import wer_feedback
from speechadapt.bin import finetune
from speechadapt.training.schedulers import ConstantLR, TriStage

from mini_corpus import data_flags  # noqa: E402 (tests/ is on sys.path)


def test_the_rate_decisions_on_a_scripted_wer_sequence():
    state = {"scale": 1.0, "best": None, "bad": 0}
    wers = [30.0, 25.0, 24.95, 24.0, 24.5, 24.2, 24.1]
    decisions = [wer_feedback(state, w, factor=0.5, delta=0.1, patience=3) for w in wers]
    # 24.95 beats 25 by less than delta: a cut; three in a row without a 0.1 gain: stop
    assert decisions == ["improved", "improved", "cut", "improved", "cut", "cut", "stop"]
    assert state["scale"] == 0.125 and state["best"] == 24.0 and state["bad"] == 3


def test_the_feedback_scale_multiplies_any_schedule_and_resumes():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = TriStage(opt, total_steps=100)
    sched.step_batch(20)
    plain = sched.get_last_lr()[0]
    sched.feedback["scale"] = 0.25
    sched.step_batch(20)
    assert sched.get_last_lr()[0] == pytest.approx(plain * 0.25)
    fresh = TriStage(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), total_steps=100)
    fresh.load_state_dict(sched.state_dict())
    assert fresh.get_last_lr()[0] == pytest.approx(plain * 0.25)
    old = {k: v for k, v in ConstantLR(opt).state_dict().items() if k != "feedback"}  # a file from before
    const = ConstantLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
    const.load_state_dict(old)
    assert const.get_last_lr()[0] == pytest.approx(0.1)


def run(root, exp, *flags):
    finetune.main(["--source-exp-dir", str(root / "src"), "--epoch", "1", "--exp-dir", str(exp),
                   "--train-split", "adapt", "--test-sets", "test", *data_flags(root), "--tensorboard", "false",
                   "--optimizer", "adamw", "--base-lr", "3e-3", *flags])
    return [json.loads(line) for line in (exp / "results.jsonl").read_text().splitlines()]


def changed(a, b):
    return {k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])}


def test_stable_finetuning_trains_the_head_first_and_never_the_front_end(trained_mini_ctc, tmp_path):
    root = trained_mini_ctc
    exp = tmp_path / "stable"
    records = run(root, exp, "--freeze-frontend", "true", "--upstream-freeze-ratio", "0.5", "--max-steps", "4",
                  "--scheduler", "tri_stage", "--save-every-n", "2", "--family", "forgetting", "--method", "stable-ft")
    src = torch.load(root / "src" / "epoch-1.pt", weights_only=True)["model"]
    half = torch.load(exp / "checkpoint-2.pt", weights_only=True)["model"]
    last = torch.load(exp / "last.pt", weights_only=True)["model"]
    assert changed(src, half) and all(k.startswith("ctc_output.") for k in changed(src, half))
    moved = changed(src, last)
    assert any(k.startswith("encoder.") for k in moved) and not any(k.startswith("encoder_embed.") for k in moved)
    extra = records[0]["extra"]
    assert records[0]["method"] == "stable-ft" and extra["family"] == "forgetting"
    assert extra["upstream_held_steps"] == 2 and extra["freeze_frontend"] is True and extra["steps"] == 4
    assert extra["tuned_params"] == sum(v.numel() for k, v in src.items()
                                        if not k.startswith("encoder_embed.") and v.is_floating_point()
                                        and "running" not in k and "num_batches" not in k)


def test_the_metric_driven_rate_cuts_then_stops_and_keeps_the_best(trained_mini_ctc, tmp_path):
    root = trained_mini_ctc
    exp = tmp_path / "feedback"
    # a delta no evaluation can gain: every evaluation after the zero-shot one is a miss
    records = run(root, exp, "--valid-split", "dev", "--eval-every", "1", "--max-steps", "10", "--lr-feedback", "true",
                  "--lr-feedback-delta", "1000", "--lr-feedback-patience", "2", "--dev-subset", "2")
    extra = records[0]["extra"]
    assert extra["steps"] == 2  # cut after update 1, stop after update 2
    assert extra["lr_feedback"]["final_scale"] == 0.5 and extra["lr_feedback"]["dev_subset"] == 2
    curve = [json.loads(line) for line in (exp / "dev_curve.jsonl").read_text().splitlines()]
    assert [p["step"] for p in curve] == [0, 1, 2]
    best = torch.load(exp / "best.pt", weights_only=True)
    assert best["dev_wer"] == min(p["wer"] for p in curve) and extra["best_step"] == best["step"]


@pytest.mark.parametrize("flags, message", [
    (["--optimizer", "mezo", "--upstream-freeze-ratio", "0.1", "--max-steps", "2"], "needs a first-order optimiser"),
    (["--params", "norms", "--upstream-freeze-ratio", "0.1", "--max-steps", "2"], "needs both the head and upstream"),
    (["--upstream-freeze-ratio", "0.1"], "give --max-steps"),
    (["--lr-feedback", "true", "--max-steps", "2"], "give --valid-split and --eval-every"),
    (["--upstream-freeze-ratio", "1.0", "--max-steps", "2"], "fraction in [0, 1)"),
])
def test_bad_stable_and_feedback_settings_are_refused(trained_mini_ctc, tmp_path, flags, message):
    with pytest.raises((SystemExit, ValueError)) as e:
        run(trained_mini_ctc, tmp_path / "bad", *flags)
    assert message in str(e.value) or message in str(getattr(e.value, "__context__", ""))
