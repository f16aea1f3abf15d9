"""The fine-tuning entry point: any optimiser and parameter selection on a trained model,
dev WER curve, best/last weights, records with the run's cost, and bad input refused."""

import json

import pytest
import torch

from speechadapt.bin import decode, finetune

from mini_corpus import TEXTS, data_flags  # noqa: E402 (tests/ is on sys.path)


@pytest.fixture(scope="module")
def source(trained_mini_ctc):
    return trained_mini_ctc


def run(root, exp, *flags):
    finetune.main(["--source-exp-dir", str(root / "src"), "--epoch", "1", "--exp-dir", str(exp),
                   "--train-split", "adapt", "--valid-split", "dev", "--test-sets", "dev,test", *data_flags(root),
                   "--tensorboard", "false", *flags])
    return [json.loads(line) for line in (exp / "results.jsonl").read_text().splitlines()]


def test_zeroth_order_norms_run_records_its_cost(source, tmp_path):
    exp = tmp_path / "mezo"
    records = run(source, exp, "--optimizer", "mezo", "--params", "norms", "--base-lr", "1e-3", "--max-steps", "4",
                  "--eval-every", "2")
    assert [r["test_set"] for r in records] == ["dev", "test"]
    extra = records[0]["extra"]
    assert records[0]["method"] == "mezo-norms" and extra["family"] == "finetune"
    assert extra["steps"] == 4 and extra["forwards"] == 8 and extra["backwards"] == 0
    assert extra["zo_num_queries"] == 1 and extra["zo_eps"] == 1e-3  # the mezo preset's, as run
    norms = sum(p.numel() for n, p in torch.load(exp / "last.pt", weights_only=True)["model"].items()
                if "norm" in n)
    assert 0 < extra["tuned_params"] == norms
    assert extra["peak_train_mb"] > 0 and extra["peak_infer_mb"] > 0 and "VmHWM" in extra["memory_method"]
    curve = [json.loads(line) for line in (exp / "dev_curve.jsonl").read_text().splitlines()]
    assert [p["step"] for p in curve] == [0, 2, 4] and [p["forwards"] for p in curve] == [0, 4, 8]
    best = torch.load(exp / "best.pt", weights_only=True)
    assert best["dev_wer"] == min(p["wer"] for p in curve)
    src = torch.load(source / "src" / "epoch-1.pt", weights_only=True)["model"]
    last = torch.load(exp / "last.pt", weights_only=True)["model"]
    changed = {k for k in src if not torch.equal(src[k], last[k])}
    assert changed and all("norm" in k for k in changed)  # only the norms moved
    # the fine-tuned directory decodes on its own (model.json + the weights)
    assert "test" in decode.main(["--exp-dir", str(exp), "--checkpoint", str(exp / "last.pt"), "--test-sets", "test",
                                  *data_flags(source)])


def test_first_order_zero_shot_and_the_expected_wer_objective(source, tmp_path):
    adamw = run(source, tmp_path / "adamw", "--optimizer", "adamw", "--base-lr", "1e-3", "--max-steps", "3")
    assert adamw[0]["method"] == "adamw" and adamw[0]["extra"]["backwards"] == 3
    zero = run(source, tmp_path / "zero", "--num-epochs", "0")
    assert zero[0]["method"] == "zero-shot" and zero[0]["extra"]["steps"] == 0
    wer = run(source, tmp_path / "wer", "--optimizer", "zo-asr", "--zo-num-queries", "2", "--objective", "wer",
              "--wer-samples", "3", "--params", "decoder", "--max-steps", "2")
    assert wer[0]["method"] == "zo-asr-decoder-wer" and wer[0]["extra"]["forwards"] == 2 * 2 * 2
    assert wer[0]["extra"]["tuned_params"] == sum(
        v.numel() for k, v in torch.load(tmp_path / "wer" / "last.pt", weights_only=True)["model"].items()
        if k.startswith("ctc_output."))


def test_a_diverged_run_is_recorded_with_the_weights_dev_chose(source, tmp_path):
    records = run(source, tmp_path / "nan", "--optimizer", "mezo", "--base-lr", "1e30", "--max-steps", "8",
                  "--eval-every", "1", "--max-bad-batches", "2")
    extra = records[0]["extra"]
    assert "2 bad batches in a row" in extra["diverged"] and extra["best_step"] == 0
    assert records[0]["model"].endswith("nan/greedy-best-step-0")
    zero = run(source, tmp_path / "zero", "--num-epochs", "0")
    assert [r["wer"] for r in records] == [r["wer"] for r in zero]  # decoded with the step-0 weights


@pytest.mark.parametrize("flags, message", [
    (["--params", "no_such_layer"], "matched none"),
    (["--optimizer", "mezo", "--zo-eps", "0"], "--zo-eps must be > 0"),
    (["--optimizer", "zo-asr", "--zo-num-queries", "0"], "--zo-num-queries must be >= 1"),
    (["--lr-scales", "nope=2"], "groups \\['nope'\\]"),
    (["--train-split", "missing"], "mini_cuts_missing.jsonl.gz does not exist"),
])
def test_bad_input_is_refused_before_any_step(source, tmp_path, capsys, flags, message):
    with pytest.raises((SystemExit, ValueError)) as exc:
        run(source, tmp_path / "bad", "--max-steps", "1", *flags)
    assert __import__("re").search(message, str(exc.value) + capsys.readouterr().err)
    assert not (tmp_path / "bad" / "last.pt").exists()


def test_an_empty_or_too_small_adaptation_set_is_refused(source, tmp_path, capsys):
    import gzip

    with gzip.open(source / "fbank" / "mini_cuts_empty.jsonl.gz", "wt"):
        pass
    with pytest.raises((SystemExit, ValueError)) as exc:
        run(source, tmp_path / "empty", "--train-split", "empty", "--max-steps", "1")
    assert "mini_cuts_empty.jsonl.gz" in str(exc.value) + capsys.readouterr().err
    with pytest.raises(ValueError, match="yields no batch"):  # 8 cuts of 1-1.6 s never fill 60 s batches
        run(source, tmp_path / "small", "--max-duration", "60", "--drop-last", "true", "--max-steps", "1")
    assert not (tmp_path / "small" / "last.pt").exists()


def test_llm_asr_encoders_are_frozen_by_design(tmp_path):
    from speechadapt.adapt.finetune import select_tuned
    from speechadapt.models.hf.fixtures import make_tiny_qwen2
    from speechadapt.models.llm_asr import LlmAsrConfig, LlmAsrModel
    from speechadapt.models.llm_asr_build import load_llm_for_asr
    from speechadapt.models.zipformer import ZipformerEncoder, get_preset

    llm, tokenizer = load_llm_for_asr(make_tiny_qwen2(tmp_path / "q", TEXTS, tokenizer_vocab_size=300, hidden_size=64,
                                                      intermediate_size=128))
    model = LlmAsrModel([ZipformerEncoder(get_preset("tiny"))], llm, tokenizer, LlmAsrConfig(lora_r=4))
    with pytest.raises(ValueError, match="frozen by design"):
        select_tuned(model, "encoder")
    with pytest.raises(ValueError, match="frozen by design"):
        select_tuned(model, "norm")
    assert select_tuned(model, "lora") and all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())


def test_whisper_from_a_local_directory_with_separate_encoder_and_decoder_rates(source, tmp_path):
    from speechadapt.adapt.finetune import lr_scale_function
    from speechadapt.models.hf.fixtures import make_tiny_whisper
    from speechadapt.models.hf.loading import load_whisper_adapter
    from speechadapt.training.optim import OptimizerConfig, build_optimizer

    whisper_dir = make_tiny_whisper(tmp_path / "whisper", TEXTS)
    exp = tmp_path / "whisper-ft"
    finetune.main(["--model", "whisper", "--model-dir", str(whisper_dir), "--exp-dir", str(exp),
                   "--train-split", "adapt", "--valid-split", "dev", "--test-sets", "test", *data_flags(source),
                   "--tensorboard", "false", "--lr-scales", "encoder=0.1", "--max-steps", "2", "--max-new-tokens", "5"])
    record = json.loads((exp / "results.jsonl").read_text().splitlines()[-1])
    assert record["method"] == "adamw" and record["extra"]["steps"] == 2 and record["extra"]["backwards"] == 2
    model = load_whisper_adapter(whisper_dir)
    opt = build_optimizer(model.named_parameters(), OptimizerConfig(optimizer="adamw", base_lr=1e-4),
                          lr_scale_of=lr_scale_function(model, "encoder=0.1"))
    rates = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert rates[id(named["model.model.encoder.conv1.weight"])] == pytest.approx(1e-5)
    assert rates[id(named["model.model.decoder.embed_tokens.weight"])] == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="cannot sample and score"):  # before any step
        finetune.main(["--model", "whisper", "--model-dir", str(whisper_dir), "--exp-dir", str(tmp_path / "w2"),
                       "--train-split", "adapt", *data_flags(source), "--objective", "wer", "--optimizer", "mezo",
                       "--max-steps", "1"])
    assert not (tmp_path / "w2" / "last.pt").exists()


def test_resuming_a_run_whose_source_model_changed_is_refused(source, tmp_path):
    exp = tmp_path / "ft"
    run(source, exp, "--optimizer", "adamw", "--params", "norms", "--base-lr", "1e-3", "--max-steps", "2",
        "--eval-every", "2", "--save-every-n", "1")
    spec = json.loads((exp / "model.json").read_text())
    (exp / "model.json").write_text(json.dumps(dict(spec, vocab_size=spec.get("vocab_size", 0) + 1)))
    with pytest.raises(ValueError, match="describes another model than this command builds"):
        run(source, exp, "--optimizer", "adamw", "--params", "norms", "--base-lr", "1e-3", "--max-steps", "4",
            "--eval-every", "2", "--start-epoch", "auto")


def test_resuming_with_other_settings_is_refused_and_a_longer_budget_is_not(source, tmp_path):
    exp = tmp_path / "ft"
    common = ("--optimizer", "adamw", "--params", "norms", "--base-lr", "1e-3", "--eval-every", "2",
              "--save-every-n", "1")
    run(source, exp, *common, "--max-steps", "2")
    # another augmentation (a changed conf) must not silently continue the old run
    with pytest.raises(ValueError, match=r"other settings \(noise_mix_prob: 0.5 -> 0.9"):
        run(source, exp, *common, "--max-steps", "4", "--noise-mix-prob", "0.9", "--start-epoch", "auto")
    with pytest.raises(ValueError, match="base_lr"):
        run(source, exp, *common[:4], "--base-lr", "1e-2", *common[6:], "--max-steps", "4", "--start-epoch", "auto")
    run(source, exp, *common, "--max-steps", "4", "--start-epoch", "auto")  # extending the budget resumes
    assert json.loads((exp / "last.pt").parent.joinpath("finetune_settings.json").read_text())["base_lr"] == 1e-3
