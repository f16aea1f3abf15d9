"""Domain augmentation: our tempo change (pitch kept, duration scaled), synthetic RIRs and
reverb (length and energy kept), the flags (off by default, audio augmentation refused
without on-the-fly features), and exact resume (augmented batches of a resumed epoch
equal the uninterrupted run's, with workers too; epochs differ)."""

import argparse
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, Recording, RecordingSet

from speechadapt.data.augment import (CutAugmenter, WsolaTempo, change_tempo, load_rirs, stable_seed,
                                      synthetic_rir, tempo_cut)
from speechadapt.data.datamodule import AsrDataModule, DataConfig
from speechadapt.data.dataset import SpeechDataset
from speechadapt.data.features import featurise_split
from speechadapt.data.manifests import make_cuts, rows_to_manifests, write_noise_manifests
from speechadapt.training.state import iterate_from
from speechadapt.utils.flags import add_dataclass_arguments, dataclass_from_args, parse_args

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "aug"
SR = 16000


def _make_rirs_module():
    spec = importlib.util.spec_from_file_location("make_rirs", ROOT / "local" / "make_rirs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tone_rows(directory, durations, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i, seconds in enumerate(durations):
        path = directory / f"utt{i:03d}.wav"
        t = np.arange(int(SR * seconds)) / SR
        f0 = 150 + 40 * i
        audio = sum(0.1 / h * np.sin(2 * np.pi * h * f0 * t) for h in (1, 2, 3)) + 0.005 * rng.standard_normal(t.size)
        sf.write(path, audio, SR, subtype="PCM_16")
        rows.append({"id": f"utt{i:03d}", "audio": str(path), "text": f"call number {i}", "voice": "en-us",
                     "domain": "source", "seen_in_train": True})
    return rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("aug")
    (root / "audio").mkdir()
    recordings, supervisions, _ = rows_to_manifests(_tone_rows(root / "audio", [0.8 + 0.2 * (i % 4) for i in range(8)]))
    featurise_split(make_cuts(recordings, supervisions), root / "fbank", "train", PREFIX)
    (root / "noise").mkdir()
    noise_rows = [{**r, "noise_type": "white"} for r in _tone_rows(root / "noise", [0.5, 2.5], seed=1)]
    noise = write_noise_manifests(noise_rows, root / "manifests", PREFIX, "noise")
    featurise_split(noise, root / "fbank", "noise", PREFIX)
    rirs = _make_rirs_module().make_rirs(root / "rirs", num=4, seed=3)
    return {"fbank": root / "fbank", "rirs": rirs, "root": root}


def _module(corpus, *extra, input_kind="fbank", seed=7):
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, DataConfig)
    args = parse_args(parser, ["--manifest-dir", str(corpus["fbank"]), "--cuts-prefix", PREFIX,
                               "--num-workers", "0", "--num-buckets", "2", "--max-duration", "2.5",
                               "--drop-last", "false", "--enable-spec-aug", "false", *extra])
    return AsrDataModule(dataclass_from_args(DataConfig, args), input_kind, seed=seed)


def _all_augmentations(corpus, prob="0.5"):
    return ["--on-the-fly-feats", "true", "--speed-perturb-factors", "0.9,1.1", "--speed-perturb-prob", prob,
            "--tempo-factors", "0.8,1.25", "--tempo-prob", prob, "--rir-recordings", str(corpus["rirs"]),
            "--reverb-prob", prob, "--enable-noise-mix", "true", "--noise-cuts", "noise", "--noise-mix-prob", prob,
            "--noise-snr", "5,15"]


def _epoch(loader, epoch, skip=0):
    """The batches of ``epoch`` as the Trainer iterates them (set_epoch, then skip)."""
    loader.sampler.set_epoch(epoch)
    return [(b.cut_ids, b.inputs, b.input_lens, b.texts) for b in iterate_from(loader, skip)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for (ids_a, x_a, len_a, text_a), (ids_b, x_b, len_b, text_b) in zip(a, b):
        assert ids_a == ids_b and text_a == text_b
        assert torch.equal(len_a, len_b) and torch.equal(x_a, x_b)  # bit for bit


def _dominant_hz(x):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return np.argmax(spectrum) * SR / x.size


# ---- tempo -------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.8, 0.9, 1.1, 1.25])
def test_tempo_keeps_pitch_and_scales_duration(factor):
    t = np.arange(2 * SR) / SR
    sine = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = change_tempo(sine, factor, SR)
    assert out.dtype == np.float32 and out.size == round(sine.size / factor)
    assert abs(_dominant_hz(out) - 440) / 440 < 0.03
    assert abs(np.sqrt(np.mean(out[800:-800] ** 2)) - np.sqrt(0.125)) < 0.02  # no level change
    # a 1 s tone burst between silences lasts 1/factor seconds afterwards
    burst = np.concatenate([np.zeros(SR // 2), 0.5 * np.sin(2 * np.pi * 300 * t[:SR]), np.zeros(SR // 2)])
    envelope = np.convolve(np.abs(change_tempo(burst, factor, SR)), np.ones(160) / 160, "same")
    loud = np.flatnonzero(envelope > 0.15)
    assert abs((loud[-1] - loud[0]) / SR - 1 / factor) / (1 / factor) < 0.02
    assert abs(loud[0] / SR - 0.5 / factor) < 0.02  # the onset moves with the tempo too


def test_tempo_on_a_lhotse_cut_keeps_metadata_consistent(tmp_path):
    t = np.arange(int(1.5 * SR)) / SR
    sf.write(tmp_path / "a.wav", 0.3 * np.sin(2 * np.pi * 500 * t), SR)
    cut = Recording.from_file(tmp_path / "a.wav").to_cut()
    faster = tempo_cut(cut, 1.25)
    assert faster.id == cut.id and abs(faster.duration - 1.2) < 1e-6
    assert [type(tr) for tr in faster.recording.transforms] == [WsolaTempo]
    audio = faster.load_audio()
    assert audio.shape == (1, faster.num_samples)
    assert abs(_dominant_hz(audio[0]) - 500) / 500 < 0.03
    part = faster.truncate(offset=0.2, duration=0.6)  # a window of the faster audio
    assert part.load_audio().shape == (1, part.num_samples)
    # survives pickling (DataLoader workers) and lhotse's manifest round trip
    again = pickle.loads(pickle.dumps(faster))
    assert np.array_equal(again.load_audio(), audio)
    from lhotse.cut import MonoCut

    assert np.array_equal(MonoCut.from_dict(faster.to_dict()).load_audio(), audio)


# ---- RIRs and reverb -----------------------------------------------------------------


def test_synthetic_rir_is_normalised_and_decays_at_its_rt60():
    for rt60 in (0.3, 0.6):
        rir = synthetic_rir(np.random.default_rng(1), rt60=rt60, drr_db=0.0)
        assert rir.dtype == np.float32 and rir.size == int(np.ceil(rt60 * SR))
        assert int(np.argmax(np.abs(rir))) == 0 and abs(float(np.sum(rir.astype(np.float64) ** 2)) - 1) < 1e-5
        # Schroeder decay of the late tail, -5 to -25 dB, extrapolated to 60 dB
        late = rir[int(0.05 * SR):].astype(np.float64)
        edc = 10 * np.log10(np.cumsum(late[::-1] ** 2)[::-1] / np.sum(late ** 2))
        i5, i25 = np.argmax(edc < -5), np.argmax(edc < -25)
        assert abs(3 * (i25 - i5) / SR - rt60) / rt60 < 0.2
    a, b = (synthetic_rir(np.random.default_rng(5)) for _ in range(2))
    assert np.array_equal(a, b)  # a function of the generator


def test_make_rirs_writes_a_manifest_and_reverb_keeps_length_and_energy(corpus, tmp_path):
    rirs = load_rirs(corpus["rirs"])
    assert len(rirs) == 4 and isinstance(RecordingSet.from_file(corpus["rirs"]), RecordingSet)
    assert all(Path(r.sources[0].source).is_file() and r.sampling_rate == SR for r in rirs)
    cut = make_cuts(*rows_to_manifests(_tone_rows(tmp_path, [1.3]))[:2])[0]
    dry = cut.load_audio()
    for rir in rirs:
        wet = cut.reverb_rir(rir_recording=rir, affix_id=False).load_audio()
        assert wet.shape == dry.shape and not np.allclose(wet, dry, atol=1e-3)
        ratio = np.sqrt(np.mean(wet ** 2) / np.mean(dry ** 2))
        assert 0.5 < ratio < 2.0
    # the stage is deterministic per (seed, i), and a smaller rerun drops the extra files
    module = _make_rirs_module()
    module.main(["--out-dir", str(tmp_path / "r"), "--num", "3", "--seed", "3"])
    module.main(["--out-dir", str(tmp_path / "r"), "--num", "2", "--seed", "3"])
    assert sorted(p.name for p in (tmp_path / "r").glob("rir_*.wav")) == ["rir_00000.wav", "rir_00001.wav"]
    assert len(load_rirs(tmp_path / "r" / "rirs_recordings.jsonl.gz")) == 2
    assert np.array_equal(sf.read(tmp_path / "r" / "rir_00001.wav")[0], sf.read(rirs[1].sources[0].source)[0])
    assert not list((tmp_path / "r").glob(".*tmp"))


# ---- flags -------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [["--speed-perturb-factors", "0.9,1.1"], ["--tempo-factors", "1.1"],
                                   ["--rir-recordings", "RIRS"]])
def test_audio_augmentation_needs_on_the_fly_feats(corpus, flags):
    flags = [str(corpus["rirs"]) if f == "RIRS" else f for f in flags]
    dm = _module(corpus, *flags)
    cuts = dm.load_cuts("train")
    with pytest.raises(ValueError, match=f"{flags[0]}.*--on-the-fly-feats true"):
        dm.train_dataloaders(cuts)
    # with the flag, or for a model that reads the waveform, it is accepted
    assert next(iter(_module(corpus, *flags, "--on-the-fly-feats", "true").train_dataloaders(cuts))).inputs.ndim == 3
    assert next(iter(_module(corpus, *flags, input_kind="waveform").train_dataloaders(cuts))).inputs.ndim == 2


def test_bad_augmentation_values_are_refused():
    for bad in (dict(tempo_factors=(3.0,)), dict(speed_perturb_factors=(0.0,)), dict(reverb_prob=1.5),
                dict(noise_mix_prob=-0.1)):
        with pytest.raises(ValueError, match="--"):
            DataConfig(**bad).validate()
    with pytest.raises(FileNotFoundError, match="--rir-recordings"):
        AsrDataModule(DataConfig(rir_recordings="/nonexistent/rirs.jsonl.gz", on_the_fly_feats=True)) \
            .train_dataloaders(CutSet.from_cuts([]))


def test_default_flags_leave_features_unchanged(corpus):
    dm = _module(corpus, "--shuffle", "false")
    loader = dm.train_dataloaders(dm.load_cuts("train"))
    assert loader.sampler._transforms == []  # nothing is installed
    batches = list(loader)
    for batch in batches:
        plain = SpeechDataset("fbank")[CutSet.from_cuts(batch.cuts)]
        assert torch.equal(batch.inputs, plain.inputs) and batch.cut_ids == plain.cut_ids
    # factors given at probability 0: the same as on-the-fly fbank without augmentation
    fly = _module(corpus, "--shuffle", "false", "--on-the-fly-feats", "true")
    zero = _module(corpus, *_all_augmentations(corpus, prob="0"), "--shuffle", "false")
    cuts = dm.load_cuts("train")
    _assert_same_batches(_epoch(fly.train_dataloaders(cuts), 1), _epoch(zero.train_dataloaders(cuts), 1))


# ---- what the augmenter does ---------------------------------------------------------


def test_every_augmentation_changes_the_audio_and_keeps_ids(corpus):
    cuts = _module(corpus).load_cuts("train").to_eager()
    noise = list(_module(corpus).load_cuts("noise"))
    rirs = load_rirs(corpus["rirs"])
    cut = cuts[0]
    dry = cut.load_audio()
    cases = {"speed": dict(speed_factors=(1.1,), speed_prob=1.0), "tempo": dict(tempo_factors=(1.25,), tempo_prob=1.0),
             "reverb": dict(rirs=rirs, reverb_prob=1.0), "noise": dict(noise_cuts=noise, noise_prob=1.0)}
    for name, kwargs in cases.items():
        out = CutAugmenter(seed=1, **kwargs).augment(cut, epoch=1)
        audio = out.load_audio()
        assert out.id == cut.id and out.supervisions[0].text == cut.supervisions[0].text, name
        if name in ("speed", "tempo"):
            assert abs(out.duration - cut.duration / kwargs[f"{name}_factors"][0]) < 1e-3, name
        else:
            assert out.duration == cut.duration and audio.shape == dry.shape, name
            assert not np.allclose(audio, dry, atol=1e-3), name
        assert audio.shape[-1] == out.num_samples, name
    assert cut.has_features  # the original cut is untouched
    # noise shorter than the cut is laid end to end: the mix covers the whole cut
    short = [n for n in noise if n.duration < 1.0]
    mixed = CutAugmenter(seed=1, noise_cuts=short, noise_prob=1.0).augment(cuts[-1], epoch=1)
    assert mixed.duration == cuts[-1].duration and len(mixed.tracks) >= 3


def test_choices_are_a_function_of_seed_epoch_and_cut_id(corpus):
    cuts = _module(corpus).load_cuts("train").to_eager()
    kwargs = dict(speed_factors=(0.9, 1.1), speed_prob=0.5, tempo_factors=(0.8, 1.25), tempo_prob=0.5,
                  rirs=load_rirs(corpus["rirs"]), reverb_prob=0.5,
                  noise_cuts=list(_module(corpus).load_cuts("noise")), noise_prob=0.5)

    def plan(seed, epoch, order=slice(None)):
        augmenter = CutAugmenter(seed, **kwargs)
        return {c.id: augmenter.augment(c, epoch).to_dict() for c in list(cuts)[order]}

    assert plan(1, 2) == plan(1, 2) == plan(1, 2, slice(None, None, -1))  # batch order plays no part
    assert plan(1, 2) != plan(1, 3) and plan(1, 2) != plan(2, 2)
    assert stable_seed(1, 2, "utt000", "speed") == 4507763661316502304  # the same in every process


# ---- exact resume ------------------------------------------------------------------


def test_resumed_epoch_gives_the_same_augmented_batches(corpus):
    dm = _module(corpus, *_all_augmentations(corpus))
    cuts = dm.load_cuts("train")
    full = _epoch(dm.train_dataloaders(cuts), 2)
    assert len(full) >= 4
    # the sampler's state after two batches, then a fresh loader from that state
    loader = dm.train_dataloaders(cuts)
    loader.sampler.set_epoch(2)
    it = iter(loader)
    head = [next(it) for _ in range(2)]
    state = loader.sampler.state_dict()
    resumed = dm.train_dataloaders(cuts, sampler_state_dict=state)
    _assert_same_batches(full[2:], [(b.cut_ids, b.inputs, b.input_lens, b.texts) for b in resumed])
    _assert_same_batches(full[:2], [(b.cut_ids, b.inputs, b.input_lens, b.texts) for b in head])
    # the augmentation really was on: features differ from the plain on-the-fly ones
    plain = _epoch(_module(corpus, "--on-the-fly-feats", "true").train_dataloaders(cuts), 2)
    assert [b[0] for b in plain] != [b[0] for b in full] or \
        any(not torch.equal(p[1], f[1]) for p, f in zip(plain, full))


def test_resume_with_workers_matches_the_single_process_run(corpus):
    flags = _all_augmentations(corpus)
    cuts = _module(corpus).load_cuts("train")
    single = _epoch(_module(corpus, *flags).train_dataloaders(cuts), 3)
    workers = _module(corpus, *flags, "--num-workers", "2")
    # the Trainer's resume: set the epoch, fast-forward the sampler past the done batches
    _assert_same_batches(single[1:], _epoch(workers.train_dataloaders(cuts), 3, skip=1))


def test_epochs_get_different_augmentations(corpus):
    dm = _module(corpus, *_all_augmentations(corpus), "--shuffle", "false")
    cuts = dm.load_cuts("train")
    loader = dm.train_dataloaders(cuts)
    one, two, one_again = _epoch(loader, 1), _epoch(loader, 2), _epoch(loader, 1)
    _assert_same_batches(one, one_again)

    def by_cut(batches):
        return {i: x[j, :int(n[j])] for ids, x, n, _ in batches for j, i in enumerate(ids)}

    a, b = by_cut(one), by_cut(two)
    assert set(a) == set(b)
    differ = sum(a[i].shape != b[i].shape or not torch.equal(a[i], b[i]) for i in a)
    assert differ >= len(a) // 2
