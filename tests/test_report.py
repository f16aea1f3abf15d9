"""The report stage: RESULTS.md tables and plots come from results.jsonl only."""

import time

from torch.utils.tensorboard import SummaryWriter

from speechadapt.bin import report
from speechadapt.decoding.scoring import ErrorCounts, ResultRecord, append_result


def test_report_tables_latest_record_and_plots(tmp_path):
    exp = tmp_path / "exp"
    res = exp / "results.jsonl"
    append_result(res, ResultRecord.from_counts("ctc/greedy", "source_test", ErrorCounts(1, 1, 2, 100), model="epoch-5-avg-2"))
    time.sleep(0.01)
    append_result(res, ResultRecord.from_counts("ctc/greedy", "source_test", ErrorCounts(0, 1, 2, 100), model="epoch-5-avg-2"))
    append_result(res, ResultRecord.from_counts("ctc/greedy", "target_test", ErrorCounts(3, 3, 6, 100), model="epoch-5-avg-2"))
    append_result(res, ResultRecord("suta", "target_test", 9.5, extra={"family": "tta"}))
    (exp / "stage_times.tsv").write_text("synth\t10\ttrain ctc\t12.5\tfast\nsynth\t10\ttrain ctc\t11.0\tfast\n")
    w = SummaryWriter(str(exp / "ctc" / "tensorboard"))
    for step in range(5):
        w.add_scalar("train/loss", 10.0 / (step + 1), step)
    w.close()

    out = tmp_path / "RESULTS.md"
    report.main(["--exp-dir", str(exp), "--out", str(out), "--title", "synth"])
    text = out.read_text()
    assert "## ctc" in text and "## tta" in text
    # the later source_test record (3 errors / 100) replaced the first (4 / 100)
    assert "| ctc/greedy | epoch-5-avg-2 | 3.00 | 12.00 |" in text
    assert any(line.startswith("| suta |") and line.endswith("| 9.50 |") for line in text.splitlines())
    assert "| fast | 10 | train ctc | 11.0 |" in text
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert "wer-ctc.png" in plots and "wer-tta.png" in plots
    assert any(p.startswith("curve-") for p in plots)
    assert (tmp_path / "plots" / "wer-ctc.png").stat().st_size > 1000


def test_finetune_table_has_cost_and_change_against_zero_shot(tmp_path):
    import json

    exp = tmp_path / "exp"
    res = exp / "results.jsonl"
    common = dict(family="finetune", source="exp/ctc:epoch-8-avg-3")
    zero = dict(common, tuned_params=0, steps=0, forwards=0, backwards=0, train_wall_s=0.0)
    zo = dict(common, tuned_params=1200, steps=50, forwards=100, backwards=0, train_wall_s=12.5, peak_train_mb=300.0,
              train_to_infer_memory=1.01)
    rows = (("zero-shot", zero, (20, 10), "greedy-best-step-0"), ("mezo-norms", zo, (18, 12), "greedy-best-step-20"),
            ("mezo-norms", zo, (16, 11), "greedy-best-step-50"))  # a rerun of the run dir replaces its row
    for method, extra, errors, key in rows:
        for test_set, n in zip(("target_test", "source_test"), errors):
            append_result(res, ResultRecord.from_counts(method, test_set, ErrorCounts(0, 0, n, 100), extra=extra,
                                                        model=f"ft/{method}/{key}"))
            time.sleep(0.002)
    run = exp / "ft" / "mezo-norms"
    run.mkdir(parents=True)
    (run / "dev_curve.jsonl").write_text("".join(json.dumps(dict(step=s, forwards=2 * s, wall_s=s / 4, wer=30 - s / 10))
                                                 + "\n" for s in (0, 10, 20)))
    out = tmp_path / "RESULTS.md"
    report.main(["--exp-dir", str(exp), "--out", str(out)])
    text = out.read_text()
    assert "Source: `exp/ctc:epoch-8-avg-3`" in text
    assert "| mezo-norms | 1,200 | 50 | 100 | 0 | 12.5 | 300.0 | 1.01 | 16.00 | 11.00 | -20.0% | +10.0% |" in text
    assert text.split("## finetune")[1].count("| mezo-norms |") == 1  # the rerun replaced its row
    assert (tmp_path / "plots" / "dev-ft.png").stat().st_size > 1000


def test_tta_table_has_cost_change_against_no_tta_and_the_wer_by_steps(tmp_path):
    res = tmp_path / "results.jsonl"
    base = dict(family="tta", source="exp/ctc:e8", mode="episodic", optimizer="adamw", tuned_params=440)
    append_result(res, ResultRecord("no-tta", "target_test", 20.0, model="tta/none/k", extra=dict(base, steps_per_utt=0)))
    append_result(res, ResultRecord("suta", "target_test", 15.0, model="tta/suta/k", extra=dict(
        base, steps_per_utt=10, seconds_per_utt=0.7, wer_at_steps={"2": 17.5, "5": 16.0})))
    text = report.render(tmp_path, res, tmp_path / "none.tsv", tmp_path / "R.md", tmp_path / "plots", "t")
    assert "target_test vs no-tta" in text and "| -25.0% |" in text
    assert "| suta | target_test | 2: 17.50, 5: 16.00, 10: 15.00 | 0.7 |" in text


def test_forgetting_table_weighs_source_kept_target_gained_and_the_speaker_probe(tmp_path):
    from speechadapt.decoding.scoring import ResultRecord as R

    exp = tmp_path / "exp"
    res = exp / "results.jsonl"
    rows = [("pre-trained", 1.0, 20.0, {}), ("plain-ft", 2.0, 10.0, {"steps": 200}),
            ("speech-ft", 1.02, 12.0, {"alpha": 0.3})]
    for test_set, wer in (("source_test", 5.0), ("target_test", 15.0)):  # an earlier run in the same directory
        append_result(res, R("plain-ft", test_set, wer, model="forget/plain-ft/greedy-best-step-50",
                             extra=dict(family="forgetting", steps=100)))
    for method, src, tgt, extra in rows:
        for test_set, wer in (("source_test", src), ("target_test", tgt)):
            append_result(res, R(method, test_set, wer, model=f"forget/{method}", extra=dict(family="forgetting",
                                                                                            **extra)))
    for method, acc in (("pre-trained", 90.0), ("speech-ft", 88.5)):
        append_result(res, R(method, "all", None, extra=dict(family="probe", accuracy=acc)))
        append_result(res, R(method, "source_test", None, extra=dict(family="probe", accuracy=acc - 1)))
    for alpha, (s, t) in ((0.0, (1.0, 21.0)), (0.5, (1.2, 14.0)), (1.0, (2.1, 11.0))):
        for test_set, wer in (("source_dev", s), ("target_dev", t)):
            append_result(res, R("speech-ft-sweep", test_set, wer, model=f"merge/alpha-{alpha:g}",
                                 extra=dict(family="merge-sweep", alpha=alpha)))
    out = tmp_path / "RESULTS.md"
    report.main(["--exp-dir", str(exp), "--out", str(out)])
    text = out.read_text()
    assert "## merge-sweep" not in text and "## probe" not in text  # folded into the forgetting section
    # gain kept: (20 - 12) / (20 - 10) = 80%; source +2%; the probe's "all" record
    assert "| speech-ft (alpha 0.3) |  |  | 1.02 | 12.00 | +2.0% | 80% | 88.5 |" in text
    assert "| pre-trained |  |  | 1.00 | 20.00 | +0.0% | 0% | 90.0 |" in text
    assert "| plain-ft | 200 |  | 2.00 | 10.00 | +100.0% | 100% |  |" in text
    assert text.split("## forgetting")[1].count("| plain-ft |") == 1  # the rerun replaced the earlier run's row
    assert "| 0.3 * |" not in text and "| 0.5 | 1.20 | 14.00 |" in text  # the sweep table, the pick marked
    assert (tmp_path / "plots" / "merge-alpha-speech-ft.png").stat().st_size > 1000


def test_one_table_puts_every_method_against_one_zero_shot_row_and_plots_gain_against_cost(tmp_path):
    from speechadapt.decoding.scoring import ResultRecord as R

    res = tmp_path / "results.jsonl"
    src = "exp/full/ctc:epoch-8-avg-3.pt"
    ft = dict(source=src, tuned_params=1000, forwards=400, backwards=200, train_wall_s=50.0, peak_train_mb=700.0)
    records = [  # (family, method, model, extra, {set: WER})
        ("finetune", "zero-shot", "ft_ctc/zero_shot", dict(source=src, tuned_params=0, forwards=0, backwards=0),
         {"source_test": 2.0, "target_test": 20.0, "untuned_test": 40.0}),
        ("finetune", "mezo-all", "ft_ctc/mezo_all", dict(ft, backwards=0), {"source_test": 2.2, "target_test": 15.0,
                                                                           "untuned_test": 38.0}),
        ("finetune", "mezo-all-seed2", "ft_ctc/mezo_all_seed2", dict(ft, backwards=0), {"target_test": 14.0}),
        ("tta", "no-tta", "tta_ctc/none", dict(source=src, steps_per_utt=0), {"target_test": 20.0}),
        ("tta", "suta-seed2", "tta_ctc/suta_seed2", dict(source=src), {"target_test": 15.0}),
        ("tta", "suta", "tta_ctc/suta", dict(source=src, tuned_params=50, forwards=9, backwards=9, adapt_wall_s=3.5,
                                             peak_mb=300.0), {"target_test": 18.0, "untuned_test": 44.0}),
        ("forgetting", "pre-trained", "forget/pretrained", dict(source=src), {"target_test": 20.0}),
        ("forgetting", "plain-ft", "forget/plain_ft", ft, {"source_test": 3.0, "target_test": 10.0}),
        ("forgetting", "plain-ft+merge", "forget/merge_plain_ft",
         dict(alpha=0.5, finetuned=["exp/full/forget/plain_ft/best.pt"]), {"source_test": 2.1, "target_test": 12.0}),
    ]
    for family, method, model, extra, wers in records:
        for test_set, wer in wers.items():
            append_result(res, R(method, test_set, wer, model=model, extra=dict(family=family, **extra)))
    append_result(res, R("plain-ft", "all", None, extra=dict(family="probe", accuracy=71.5)))
    append_result(res, R("pre-trained", "all", None, extra=dict(family="probe", accuracy=73.0)))
    assert "on one footing" not in report.render(tmp_path, res, tmp_path / "none.tsv", tmp_path / "R.md",
                                                 tmp_path / "plots", "t")  # only when told which set is gained on
    text = report.render(tmp_path, res, tmp_path / "none.tsv", tmp_path / "R.md", tmp_path / "plots", "t",
                         gain_set="target_test")
    story = text.split("## Every method on one footing")[1].split("\n## ")[0]
    assert text.index("## Every method on one footing") < text.index("## finetune")
    lines = [line for line in story.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| method | family | source model | source_test | target_test | untuned_test | "
                               "target_test vs zero-shot | source_test vs zero-shot | untuned_test vs zero-shot | "
                               "target_test gain > seed spread |")
    assert not any("seed2" in line for line in lines)  # a second seed is the spread, not a row
    assert story.count("mezo-all 15.00 and 14.00 with another seed, 1.00 points apart") == 1
    assert sum(line.startswith("| zero-shot |") for line in lines) == 1  # no-tta and pre-trained fold into it
    assert next(line for line in lines if line.startswith("| zero-shot |")).endswith("| 73.0 |")
    assert "| mezo-all | finetune | ctc | 2.20 | 15.00 | 38.00 | -25.0% | +10.0% | -5.0% | yes | 1,000 | 400 | 0 | 50 |" in story
    assert "| suta | tta | ctc |  | 18.00 | 44.00 | -10.0% |  | +10.0% | no | 50 | 9 | 9 | 3.5 | 300 |  |" in story
    assert "| plain-ft | forgetting | ctc | 3.00 | 10.00 |  | -50.0% | +50.0% |  | yes | 1,000 | 400 | 200 | 50 | 700 | 71.5 |" in story
    assert "| plain-ft+merge (alpha 0.5) | forgetting | ctc | 2.10 | 12.00 |  | -40.0% | +5.0% |  | yes | 1,000 | 400 | 200 | 50 * |" in story
    assert (tmp_path / "plots" / "story-gain-vs-cost.png").stat().st_size > 5000
