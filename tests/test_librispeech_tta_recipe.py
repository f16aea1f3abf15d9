"""The LibriSpeech TTA recipe: Gaussian-noise copies stored once (same audio on every run,
the asked std, clipping counted), CHiME-3 read from its real layout (a wav without its
transcription counted), a Whisper folder given to the TTA entry point refused, and the
--smoke recipe end to end (source, SUTA, ZO-TTA, continual rows on clean and noisy test-other).
A GPU-marked test times one real-size SUTA utterance."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechadapt.data.corpora.chime3 import chime3_rows
from speechadapt.data.corpora.miniature import write_mini_chime3
from speechadapt.data.corpora.noisy import add_noise, noisy_rows, utterance_rng

from test_commonvoice_recipe import read_records, run_smoke  # noqa: E402 (tests/ is on sys.path)


def _cuts(tmp_path, n=2, seconds=1.0):
    from speechadapt.data.manifests import write_split_manifests

    rows = []
    for i in range(n):
        path = tmp_path / f"u{i}.flac"
        sf.write(path, 0.1 * np.sin(np.arange(int(16000 * seconds)) * (0.05 + 0.01 * i)), 16000, subtype="PCM_16")
        rows.append(dict(id=f"spk-ch-{i:04d}", audio=str(path), text="HELLO WORLD", voice="spk", chapter="ch"))
    return write_split_manifests(rows, "test-other", tmp_path / "m", "librispeech")


def test_noise_is_stored_once_reproducibly_with_the_asked_std(tmp_path):
    cuts = _cuts(tmp_path)
    rows_a, clipped = noisy_rows(cuts, 0.01, 0, tmp_path / "a", "test-other-noise0.01")
    rows_b, _ = noisy_rows(cuts, 0.01, 0, tmp_path / "b", "test-other-noise0.01")
    rows_c, _ = noisy_rows(cuts, 0.01, 1, tmp_path / "c", "test-other-noise0.01")
    clean = cuts[0].load_audio()[0]
    a, b, c = (sf.read(r[0]["audio"])[0] for r in (rows_a, rows_b, rows_c))
    assert np.array_equal(a, b) and not np.allclose(a, c)  # the seed decides, nothing else
    assert abs(np.std(a - clean) - 0.01) < 0.001 and clipped == 0
    assert rows_a[0]["text"] == "HELLO WORLD" and rows_a[0]["chapter"] == "ch" and rows_a[0]["voice"] == "spk"
    loud, n = add_noise(np.full(100, 0.999), 0.05, utterance_rng(0, "x"))
    assert n > 0 and np.abs(loud).max() <= 1.0
    with pytest.raises(ValueError, match="noise std must be > 0"):
        noisy_rows(cuts, 0.0, 0, tmp_path / "d", "x")


def test_chime3_is_read_from_its_layout_and_a_missing_transcription_is_counted(tmp_path):
    root = write_mini_chime3(tmp_path)
    rows, report = chime3_rows(root, sets=["et05_bus_real", "et05_caf_simu"])
    assert report.kept == len(rows) == 4 and not report.skipped
    assert all(r["text"].isupper() and r["domain"] in ("et05_bus_real", "et05_caf_simu") for r in rows)
    assert rows[0]["voice"] == rows[0]["id"].split("_")[0]
    gone = next((root / "data" / "transcriptions" / "et05_bus_real").glob("*.trn"))
    gone.unlink()
    rows, report = chime3_rows(root, sets=["et05_bus_real", "et05_caf_simu"])
    assert report.kept == 3 and report.skipped == {"no transcription": 1} and str(gone) in report.examples[
        "no transcription"][0]
    with pytest.raises(SystemExit, match="1 of 4 rows skipped"):
        report.check(0.1)
    with pytest.raises(FileNotFoundError, match="et05_ped_real: no wav files"):
        chime3_rows(root, sets=["et05_ped_real"])
    with pytest.raises(FileNotFoundError, match="LDC2017S24"):
        chime3_rows(tmp_path / "nothing")


def test_a_whisper_folder_given_to_the_tta_recipe_is_refused(tmp_path):
    from speechadapt.bin import tta
    from speechadapt.models.hf.fixtures import make_tiny_whisper

    _cuts(tmp_path)
    whisper = make_tiny_whisper(tmp_path / "whisper")
    with pytest.raises(SystemExit, match="model_type 'whisper' is not a wav2vec2 or HuBERT CTC model"):
        tta.main(["--model", "hf_ctc", "--model-dir", str(whisper), "--manifest-dir", str(tmp_path / "m"),
                  "--cuts-prefix", "librispeech", "--test-sets", "test-other", "--exp-dir", str(tmp_path / "e")])


def test_the_smoke_recipe_runs_every_stage_on_clean_and_noisy_test_other(tmp_path):
    exp = run_smoke("librispeech_tta", tmp_path)
    stages = [line.split("\t")[1] for line in (exp / "stage_times.tsv").read_text().splitlines()]
    assert stages == ["0", "1", "2", "3", "9", "40", "41", "42", "43", "90"]
    records = read_records(exp)
    sets = {"test-other", "test-other-noise0.005", "test-other-noise0.01"}
    by = {(r["method"], r["test_set"]): r for r in records}
    assert {m for m, _ in by} == {"no-tta", "suta", "zo-tta-zo-asr", "continual-suta"}
    assert all((m, s) in by for m in ("no-tta", "suta", "zo-tta-zo-asr", "continual-suta") for s in sets)
    suta = by["suta", "test-other-noise0.01"]["extra"]
    assert suta["steps_per_utt"] == 10 and suta["base_lr"] == 2e-5 and suta["em_coef"] == 0.3 and suta["tau"] == 2.5
    assert by["zo-tta-zo-asr", "test-other"]["extra"]["zo_num_queries"] == 8
    assert by["continual-suta", "test-other"]["extra"]["mode"] == "continual"
    clean = tmp_path / "data" / "smoke" / "manifests" / "librispeech_cuts_test-other.jsonl.gz"
    noisy = clean.with_name("librispeech_cuts_test-other-noise0.01.jsonl.gz")
    from speechadapt.data.manifests import open_manifest

    a, b = next(iter(open_manifest(clean))), next(iter(open_manifest(noisy)))
    assert a.id == b.id and 0.008 < np.std(b.load_audio() - a.load_audio()) < 0.012


@pytest.mark.gpu
def test_real_size_wav2vec2_base_suta_utterance(tmp_path):
    """wav2vec2-base shapes (random weights): SUTA's 10 AdamW steps on one 10 s utterance."""
    import time

    from speechadapt.adapt.tta import TestTimeAdapter, TtaOptions, tta_parameters
    from speechadapt.data.batch import SpeechBatch
    from speechadapt.models.hf.fixtures import make_tiny_ctc
    from speechadapt.models.hf.loading import load_hf_ctc
    from speechadapt.training.optim import OptimizerConfig

    base = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
                num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16)
    model = load_hf_ctc(make_tiny_ctc(tmp_path / "w2v", **base), device="cuda").eval()
    options = TtaOptions(steps=10, params="suta", em_coef=0.3, tau=2.5)
    adapter = TestTimeAdapter(model, tta_parameters(model, "suta"), OptimizerConfig(optimizer="adamw",
                                                                                  base_lr=2e-5), options)
    utt = SpeechBatch(torch.randn(1, 160000) * 0.1, torch.tensor([160000]), ["HELLO"], ["u"], [10.0], "waveform")
    torch.cuda.reset_peak_memory_stats()
    start = time.time()
    text, log = adapter.adapt_and_decode(utt)
    torch.cuda.synchronize()
    print(f"\nwav2vec2-base shapes, SUTA 10 steps on 10 s: {time.time() - start:.2f} s, "
          f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    assert isinstance(text, str)
