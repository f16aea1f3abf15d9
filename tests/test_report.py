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
    assert "| suta |  | 9.50 |" in text
    assert "| fast | 10 | train ctc | 11.0 |" in text
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert "wer-ctc.png" in plots and "wer-tta.png" in plots
    assert any(p.startswith("curve-") for p in plots)
    assert (tmp_path / "plots" / "wer-ctc.png").stat().st_size > 1000
