"""The TTA entry point end to end on the mini corpus: a grid on a tuning set, the test
sets adapted with the chosen settings, recorded like a decode (recogs, errs, results.jsonl
with the cost), the report's TTA table, and bad input refused with one message."""

import json

import pytest
import torch

from speechadapt.bin import report, tta

from mini_corpus import data_flags  # noqa: E402 (tests/ is on sys.path)


def run(root, exp, *flags):
    """The records this run appended to the shared results file (exp's parent)."""
    results = exp.parent / "results.jsonl"
    before = len(results.read_text().splitlines()) if results.exists() else 0
    tta.main(["--source-exp-dir", str(root / "src"), "--epoch", "1", "--exp-dir", str(exp),
              "--test-sets", "dev,test", *data_flags(root), "--results", str(results), *flags])
    return [json.loads(line) for line in results.read_text().splitlines()][before:]


def test_grid_then_tests_recorded_with_cost_and_reported(trained_mini_ctc, tmp_path):
    root = trained_mini_ctc
    none = run(root, tmp_path / "none", "--steps", "0")
    assert [r["method"] for r in none] == ["no-tta", "no-tta"] and none[0]["extra"]["steps"] == 0
    records = run(root, tmp_path / "suta", "--steps", "2", "--base-lr", "1e-2", "--tune-set", "adapt",
                  "--grid", "base_lr=1e-3,3e-2;em_coef=0.3,1", "--decode-at", "1")
    grid = [json.loads(line) for line in (tmp_path / "suta" / "grid.jsonl").read_text().splitlines()]
    assert [(g["base_lr"], g["em_coef"]) for g in grid] == [(1e-3, 0.3), (1e-3, 1.0), (3e-2, 0.3), (3e-2, 1.0)]
    assert all(set(g["wer_at_steps"]) == {"1", "2"} and g["wer"] == g["wer_at_steps"]["2"] for g in grid)
    # the lowest dev WER over the settings and step counts; ties: the earlier point, the fewer steps
    wer, _, steps, best = min((g["wer_at_steps"][s], i, int(s), g) for i, g in enumerate(grid) for s in ("1", "2"))
    extra = records[0]["extra"]
    assert (extra["base_lr"], extra["em_coef"], extra["steps_per_utt"]) == (best["base_lr"], best["em_coef"], steps)
    assert extra["grid_point"]["tune_wer"] == wer and extra["grid_point"]["guard_met"] is None
    assert records[0]["method"] == "suta" and extra["family"] == "tta" and extra["mode"] == "episodic"
    n = records[0]["extra"]["num_utterances"]
    assert extra["utterances"] == n == 3 and extra["steps"] == steps * n and extra["backwards"] == steps * n
    assert extra["tuned_params"] > 0 and extra["seconds_per_utt"] > 0 and extra["adapt_rtf"] > 0
    assert extra["peak_mb"] > 0 and set(extra["wer_at_steps"]) == ({"1"} if steps == 2 else set())
    key = f"tta-adamw-s{steps}-lr{best['base_lr']:g}-em{best['em_coef']:g}"
    assert (tmp_path / "suta" / "decode" / f"errs-test-{key}.txt").is_file()
    log = [json.loads(line) for line in (tmp_path / "suta" / "tta" / f"test-{key}.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(entry["status"] == "adapted" and entry["steps"] == steps for entry in log)
    text = report.render(tmp_path, tmp_path / "results.jsonl", tmp_path / "none.tsv", tmp_path / "R.md",
                         tmp_path / "plots", "t")
    assert "## tta" in text and "test vs no-tta" in text and "| suta | episodic | adamw |" in text


def test_a_guard_set_keeps_the_choice_within_its_tolerance(trained_mini_ctc, tmp_path):
    records = run(trained_mini_ctc, tmp_path / "guarded", "--steps", "2", "--decode-at", "1", "--tune-set", "adapt",
                  "--grid", "base_lr=1e-3,1e-1", "--guard-set", "dev", "--guard-tolerance", "0")
    grid = [json.loads(line) for line in (tmp_path / "guarded" / "grid.jsonl").read_text().splitlines()]
    chosen = records[0]["extra"]["grid_point"]
    limit = chosen["guard_limit"]
    assert limit == chosen["guard_base"] and all(set(g["guard_wer_at_steps"]) == {"1", "2"} for g in grid)
    feasible = [(g["wer_at_steps"][s], i, int(s)) for i, g in enumerate(grid) for s in ("1", "2")
                if g["guard_wer_at_steps"][s] <= limit + 1e-9]
    if feasible:  # the choice is the best feasible one; without one, the best regardless (and said so)
        wer, i, steps = min(feasible)
        assert chosen["guard_met"] and (chosen["base_lr"], chosen["steps"], chosen["tune_wer"]) == (
            grid[i]["base_lr"], steps, wer)
    else:
        assert chosen["guard_met"] is False


@pytest.mark.parametrize("flags,message", [
    (["--grid", "base_lr=1e-3"], "--grid needs --tune-set"),
    (["--tune-set", "adapt", "--grid", "optimizer=sgd"], "--grid item"),
    (["--guard-set", "dev"], "--guard-set constrains the --grid choice"),
    (["--test-sets", "missing"], "missing"),
])
def test_bad_input_is_refused_with_one_message(trained_mini_ctc, tmp_path, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        run(trained_mini_ctc, tmp_path / "bad", *flags)
    assert message in str(exit_info.value) and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_hugging_face_ctc_models_adapt_their_norms_and_front_end(trained_mini_ctc, tmp_path, kind):
    from speechadapt.adapt.tta import tta_parameters
    from speechadapt.models.hf.fixtures import make_tiny_ctc
    from speechadapt.models.hf.loading import load_hf_ctc

    model_dir = make_tiny_ctc(tmp_path / kind, kind)
    model = load_hf_ctc(model_dir)
    names = [n for n, _ in tta_parameters(model)]
    front = [n for n in names if ".feature_extractor." in n or ".feature_projection." in n]
    assert front and len(front) == sum(1 for n, _ in model.named_parameters()
                                       if ".feature_extractor." in n or ".feature_projection." in n)
    assert all("norm" in n.lower() for n in names if n not in front)  # the rest: LayerNorm / GroupNorm only
    shortest = model.min_input_length  # the receptive field: one frame out, one sample fewer gives none
    assert model.output_lengths(torch.tensor([shortest - 1, shortest])).tolist() == [0, 1]
    results = tmp_path / "results.jsonl"
    tta.main(["--model", "hf_ctc", "--model-dir", str(model_dir), "--exp-dir", str(tmp_path / "run"),
              "--test-sets", "test", *data_flags(trained_mini_ctc), "--results", str(results), "--steps", "2"])
    record = json.loads(results.read_text().splitlines()[0])
    assert record["extra"]["steps"] == 2 * 3 and record["extra"]["tuned_params"] == sum(
        p.numel() for _, p in tta_parameters(model))
    assert json.loads((tmp_path / "run" / "model.json").read_text())["kind"] == "hf_ctc"
