"""The untuned shift (``untuned_test``): a fourth accent in machine hum that no other split
or augmentation has, target_test's sentences, added without moving any other split's audio."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mini_corpus import wav_digests
from speechadapt.data.noise import hum_noise, make_noise
from speechadapt.data.synth import UNTUNED_TEST, CorpusConfig, plan_corpus, prepare_corpus, report_splits

TINY = dict(num_source_train=8, num_source_dev=2, num_source_test=2, num_target_adapt=2, num_target_dev=2,
            num_target_test=4, num_babble_pool=2, num_aug_noise_per_type=1, aug_noise_seconds=0.5, chunk_size=3,
            source_voices=["en-us", "en+m3"], target_voices=["en-gb-scotland+m7"], seed=11)




def test_hum_is_tonal_at_unit_rms_and_repeats_for_a_seed():
    a = hum_noise(16000, np.random.default_rng(3))
    assert np.sqrt(np.mean(a ** 2)) == pytest.approx(1.0, rel=1e-6)
    assert np.array_equal(a, make_noise("hum", 16000, np.random.default_rng(3)))
    power = np.abs(np.fft.rfft(a)) ** 2  # 1 Hz bins: the harmonics hold most of the power
    assert np.sort(power)[-40:].sum() / power.sum() > 0.5
    assert power[4000:].sum() / power.sum() < 0.02  # nothing above the top harmonic but the floor


def test_the_untuned_set_adds_its_rows_and_moves_no_other_split(tmp_path):
    without = prepare_corpus(CorpusConfig(**TINY), tmp_path / "a", num_jobs=1)
    cfg = CorpusConfig(**{**TINY, "num_untuned_test": 3})
    rows = prepare_corpus(cfg, tmp_path / "b", num_jobs=2)
    before, after = wav_digests(tmp_path / "a"), wav_digests(tmp_path / "b")
    added = {k for k in after if k not in before}
    assert added and all(UNTUNED_TEST in k for k in added)  # its clean and noisy files only
    assert all(after[k] == before[k] for k in before)  # every other split byte-identical
    untuned = rows[UNTUNED_TEST]
    assert [r["text"] for r in untuned] == [r["text"] for r in without["target_test"][:3]]
    assert {r["voice"] for r in untuned} <= set(cfg.untuned_voices)
    assert {r["noise_type"] for r in untuned} == {"hum"} and all(10 <= r["snr_db"] <= 20 for r in untuned)
    for r in untuned:
        samples, rate = sf.read(r["audio"], dtype="int16")
        assert rate == 16000 and samples.size == r["num_samples"] > 0
    assert UNTUNED_TEST in report_splits(cfg) and UNTUNED_TEST not in report_splits(CorpusConfig(**TINY))


@pytest.mark.parametrize("change, message", [
    ({"num_untuned_test": 5}, "takes target_test's sentences"),
    ({"untuned_voices": ["en-gb-scotland+m6"]}, "share an accent"),
    ({"untuned_noise_types": ["pink"]}, "used nowhere else"),
    ({"untuned_noise_types": ["hum"], "aug_noise_types": ["hum"]}, "used nowhere else"),
    ({"untuned_snr_db": [20.0, 10.0]}, r"untuned_snr_db as \[low, high\]"),
])
def test_config_refuses_an_untuned_set_that_is_not_untuned(change, message):
    with pytest.raises(ValueError, match=message):
        plan_corpus(CorpusConfig(**{**TINY, "num_untuned_test": 2, **change}))
