"""The Common Voice recipe: the miniature release in the real layout (TSV columns, 48 kHz
mp3 clips), its parser and what it must count or name (a row without its clip, an mp3 that
does not decode, an empty sentence, a TSV without the required columns, older releases'
columns), Whisper in another language than English, a wrong model folder, and the --smoke
recipe end to end. A GPU-marked test times one real-size ZO-ASR and one AdamW step."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from speechadapt.data.corpora.commonvoice import TSV_COLUMNS, prepare_commonvoice, prepare_split, read_tsv
from speechadapt.data.corpora.miniature import CV_SIZES, write_mini_commonvoice

ROOT = Path(__file__).resolve().parents[1]


def test_the_tiny_whisper_speaks_hindi_with_the_real_prefix(tmp_path):
    from speechadapt.models.hf.fixtures import make_tiny_whisper
    from speechadapt.models.hf.loading import load_whisper_adapter

    model = load_whisper_adapter(make_tiny_whisper(tmp_path / "w"), language="hi")
    tokens = model.tokenizer.convert_ids_to_tokens(model.prefix_ids)
    assert tokens == ["<|startoftranscript|>", "<|hi|>", "<|transcribe|>", "<|notimestamps|>"]
    inputs, labels = model.label_ids(["नमस्ते"])
    assert inputs[0, 1].item() == model.tokenizer.convert_tokens_to_ids("<|hi|>")
    assert len(model.generate([torch.zeros(16000)], max_new_tokens=3)) == 1


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_mini_commonvoice(tmp_path_factory.mktemp("cv"), "hi")


@pytest.fixture
def copy(release, tmp_path):
    out = tmp_path / "hi"
    shutil.copytree(release, out)
    return out


def test_the_miniature_has_common_voices_layout_and_columns(release):
    assert release.parent.name.startswith("cv-corpus-") and release.name == "hi"
    for split, n in CV_SIZES.items():
        with open(release / f"{split}.tsv", encoding="utf-8") as f:
            header = f.readline().rstrip("\n").split("\t")
        rows = read_tsv(release / f"{split}.tsv")
        assert header == list(TSV_COLUMNS) and len(rows) == n
        assert all((release / "clips" / r["path"]).is_file() and r["path"].endswith(".mp3") for r in rows)
    assert len(read_tsv(release / "validated.tsv")) == sum(CV_SIZES.values())
    import soundfile as sf

    info = sf.info(next((release / "clips").glob("*.mp3")))
    assert info.samplerate == 48000 and info.format == "MP3"


def test_prepare_keeps_ids_speakers_text_and_resamples_to_16k(release, tmp_path):
    from speechadapt.data.manifests import open_manifest

    reports = prepare_commonvoice(release.parent.parent, "hi", ["train", "test"], tmp_path / "m")
    assert reports["train"].kept == CV_SIZES["train"] and not reports["train"].skipped
    cuts = list(open_manifest(tmp_path / "m" / "cv-hi_cuts_test.jsonl.gz"))
    rows = {Path(r["path"]).stem: r for r in read_tsv(release / "test.tsv")}
    assert sorted(c.id for c in cuts) == sorted(rows)
    for cut in cuts:
        sup = cut.supervisions[0]
        assert sup.speaker == rows[cut.id]["client_id"] and sup.text == rows[cut.id]["sentence"]
        assert sup.language == "hi" and cut.sampling_rate == 16000
    assert any('"' in c.supervisions[0].text for c in cuts + list(open_manifest(
        tmp_path / "m" / "cv-hi_cuts_train.jsonl.gz")))  # an unbalanced quote read as text (QUOTE_NONE)
    audio = cuts[0].load_audio()
    assert audio.shape == (1, cuts[0].num_samples) and abs(audio).max() > 0.01


def test_missing_and_undecodable_clips_and_empty_sentences_are_counted(copy):
    rows = read_tsv(copy / "train.tsv")
    (copy / "clips" / rows[0]["path"]).unlink()
    (copy / "clips" / rows[1]["path"]).write_bytes(b"ID3" + b"\x00" * 200)  # not an mp3 any more
    lines = (copy / "train.tsv").read_text(encoding="utf-8").splitlines()
    fields = lines[3].split("\t")
    fields[TSV_COLUMNS.index("sentence")] = "  "
    lines[3] = "\t".join(fields)
    (copy / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    recordings, supervisions, report = prepare_split(copy, "train", "hi")
    assert report.skipped == {"missing clip": 1, "audio does not decode": 1, "empty sentence": 1}
    assert report.kept == len(recordings) == len(rows) - 3 and rows[1]["path"] in report.examples[
        "audio does not decode"][0]
    with pytest.raises(SystemExit, match=r"train: 3 of 8 rows skipped.*1 missing clip"):
        report.check(0.1)
    report.check(0.5)  # within the allowance: a warning per reason, no error


def test_older_releases_columns_parse_and_a_missing_column_is_named(copy):
    old = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accents", "locale", "segment"]
    rows = read_tsv(copy / "dev.tsv")
    with open(copy / "dev.tsv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\", lineterminator="\n")
        w.writerow(old)
        w.writerows([[r.get(c, "") for c in old] for r in rows])
    _, sups, report = prepare_split(copy, "dev", "hi")
    assert report.kept == len(rows) and "variant" not in (sups[0].custom or {})
    (copy / "test.tsv").write_text("path\tsentence\nx.mp3\thello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"header lacks column\(s\) \['client_id'\]"):
        read_tsv(copy / "test.tsv")


def test_a_folder_that_is_not_whisper_is_refused_before_any_work(tmp_path, release):
    from speechadapt.bin import finetune
    from speechadapt.models.hf.fixtures import make_tiny_ctc

    prepare_commonvoice(release.parent.parent, "hi", ["dev"], tmp_path / "m")
    w2v = make_tiny_ctc(tmp_path / "w2v")
    with pytest.raises(SystemExit, match="Whisper model directory .* is incomplete, missing: tokenizer.json"):
        finetune.main(["--model", "whisper", "--model-dir", str(w2v), "--manifest-dir", str(tmp_path / "m"),
                       "--cuts-prefix", "cv-hi", "--train-split", "dev", "--exp-dir", str(tmp_path / "e")])


def run_smoke(recipe: str, work: Path, timeout: int = 600) -> Path:
    """The recipe's --smoke stages end to end through the top-level dispatcher (as CI runs them)."""
    env = dict(__import__("os").environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([str(ROOT / "run.sh"), "--recipe", recipe, "--smoke", "true", "--work-dir", str(work)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work / "exp" / "smoke"


def read_records(exp: Path):
    return [json.loads(line) for line in (exp / "results.jsonl").read_text().splitlines()]


def test_the_smoke_recipe_runs_every_stage_and_records_wer_cer_and_step_memory(tmp_path):
    exp = run_smoke("commonvoice", tmp_path)
    stages = [line.split("\t")[1] for line in (exp / "stage_times.tsv").read_text().splitlines()]
    assert stages == ["0", "1", "9", "30", "31", "32", "90"]
    records = {(r["method"], r["test_set"]): r for r in read_records(exp)}
    assert set(records) == {(m, s) for m in ("zero-shot", "adamw", "zo-asr") for s in ("dev", "test")}
    for r in records.values():
        assert r["extra"]["cer"] is not None and r["extra"]["ref_chars"] > r["ref_words"]
    zo, fo = records["zo-asr", "test"]["extra"], records["adamw", "test"]["extra"]
    assert zo["forwards"] == 2 * 8 * zo["steps"] and zo["backwards"] == 0 and zo["zo_num_queries"] == 8
    assert fo["backwards"] == fo["steps"] and fo["peak_train_mb"] > 0 and zo["peak_train_mb"] > 0
    assert (exp / "ft" / "zo_asr" / "decode").is_dir() and any(
        p.name.endswith("-norm-whisper.txt") for p in (exp / "ft" / "zo_asr" / "decode").iterdir())
    assert (exp / "RESULTS-smoke.md").is_file()


@pytest.mark.gpu
def test_real_size_whisper_large_v3_zo_and_adamw_step_memory(tmp_path):
    """Whisper-large-v3 shapes (random weights, bf16), batch 24 x 5 s: one ZO-ASR (q 8) and one AdamW step."""
    import time

    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from speechadapt.data.batch import SpeechBatch
    from speechadapt.models.hf.fixtures import make_tiny_whisper
    from speechadapt.models.hf.loading import load_whisper
    from speechadapt.models.hf.seq2seq import WhisperAdapter
    from speechadapt.training.optim import OptimizerConfig, build_optimizer

    _, processor = load_whisper(make_tiny_whisper(tmp_path / "tok"))
    config = WhisperConfig(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                           decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120, num_mel_bins=128,
                           vocab_size=51866, max_target_positions=448)
    processor.feature_extractor.feature_size = 128
    with torch.device("cuda"):
        model = WhisperAdapter(WhisperForConditionalGeneration(config).to(torch.bfloat16), processor, language="hi")
    n = 24
    batch = SpeechBatch(torch.randn(n, 80000) * 0.1, torch.full((n,), 80000), ["नमस्ते आप कैसे हैं"] * n,
                        [f"u{i}" for i in range(n)], [5.0] * n, "waveform")
    for name, cfg in (("zo-asr", OptimizerConfig(optimizer="zo-asr", base_lr=2.4e-5, zo_eps=1e-3,
                                                 zo_num_queries=8)),
                      ("adamw", OptimizerConfig(optimizer="adamw", base_lr=1e-5))):
        opt = build_optimizer(list(model.named_parameters()), cfg)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.time()

        def loss_fn(grad_enabled: bool):
            with torch.set_grad_enabled(grad_enabled):
                loss, info = model.compute_loss(batch)
                return loss / info["frames"]

        loss = opt.step(loss_fn)
        torch.cuda.synchronize()
        print(f"\nWhisper-large-v3 shapes, {name}, batch {n} x 5 s, bf16: {time.time() - start:.2f} s/step, "
              f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
        assert torch.isfinite(torch.as_tensor(loss))
        del opt
