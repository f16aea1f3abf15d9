"""Datamodule: cuts named by flag, fbank and waveform inputs from the same cuts (equal
to lhotse's own ASR dataset), DDP sharding with equal batch counts, padding duplicates,
augmentation switches, seeded workers and sampler resume."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from speechadapt.data.batch import SpeechBatch
from speechadapt.data.datamodule import AsrDataModule, DataConfig, SeedWorkers, is_padding_duplicate, split_name
from speechadapt.data.dataset import MissingTranscriptError, SpeechDataset
from speechadapt.data.features import featurise_split
from speechadapt.data.manifests import make_cuts, rows_to_manifests, write_noise_manifests
from speechadapt.utils.flags import add_dataclass_arguments, dataclass_from_args, parse_args

PREFIX = "corpus"


def _write_wavs(directory, durations, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i, seconds in enumerate(durations):
        path = directory / f"utt{i:03d}.wav"
        t = np.arange(int(16000 * seconds)) / 16000
        audio = 0.2 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(path, audio, 16000, subtype="PCM_16")
        rows.append({"id": f"utt{i:03d}", "audio": str(path), "text": f"call number {i}",
                     "voice": "en-us", "domain": "source", "seen_in_train": True})
    return rows


@pytest.fixture(scope="module")
def fbank_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dm")
    (root / "audio").mkdir()
    durations = [0.6 + 0.25 * (i % 7) for i in range(13)]
    recordings, supervisions, _ = rows_to_manifests(_write_wavs(root / "audio", durations))
    featurise_split(make_cuts(recordings, supervisions), root / "fbank", "source_train", PREFIX)
    (root / "noise").mkdir()
    noise_rows = [{**r, "noise_type": "white"} for r in _write_wavs(root / "noise", [3.0, 3.0], seed=1)]
    noise = write_noise_manifests(noise_rows, root / "manifests", PREFIX, "noise")
    featurise_split(noise, root / "fbank", "noise", PREFIX)
    # three equal cuts for the padding-duplicate case
    (root / "audio3").mkdir()
    rec3, sup3, _ = rows_to_manifests(_write_wavs(root / "audio3", [2.0, 2.0, 2.0]))
    featurise_split(make_cuts(rec3, sup3), root / "fbank", "three", PREFIX)
    return root / "fbank"


def _module(fbank_dir, *extra, input_kind="fbank", seed=42):
    import argparse

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, DataConfig)
    args = parse_args(parser, ["--manifest-dir", str(fbank_dir), "--cuts-prefix", PREFIX, "--num-workers", "0",
                               "--num-buckets", "2", *extra])
    return AsrDataModule(dataclass_from_args(DataConfig, args), input_kind, seed=seed)


def _batches_ids(loader):
    return [batch.cut_ids for batch in loader]


def test_two_ranks_cover_every_cut_with_equal_batch_counts(fbank_dir):
    dm = _module(fbank_dir, "--max-duration", "3", "--drop-last", "false")
    cuts = dm.load_cuts("source_train")
    all_ids = {c.id for c in cuts}
    per_rank = [_batches_ids(dm.train_dataloaders(cuts, world_size=2, rank=r)) for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) > 1
    seen = [{i for batch in batches for i in batch if not is_padding_duplicate(i)} for batches in per_rank]
    assert seen[0] | seen[1] == all_ids
    assert not seen[0] & seen[1]  # each real cut goes to one rank only


def test_padding_duplicates_are_recognisable(fbank_dir):
    dm = _module(fbank_dir, "--max-duration", "2.5", "--drop-last", "false")
    cuts = dm.load_cuts("three")
    per_rank = [_batches_ids(dm.valid_dataloaders(cuts, world_size=2, rank=r)) for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == 2
    flat = [i for batches in per_rank for batch in batches for i in batch]
    dups = [i for i in flat if is_padding_duplicate(i)]
    assert len(dups) == 1 and dups[0].rsplit("_dup", 1)[0] in {c.id for c in cuts}
    assert {i for i in flat if not is_padding_duplicate(i)} == {c.id for c in cuts}
    assert not is_padding_duplicate("utt001") and not is_padding_duplicate("utt001_sp0.9")


def test_sorted_decoding_batches_go_longest_first_and_cover_every_cut_over_ranks(fbank_dir):
    dm = _module(fbank_dir, "--max-duration", "4")
    cuts = dm.load_cuts("source_train")
    durations = {c.id: c.duration for c in cuts}
    batches = _batches_ids(dm.test_dataloaders(cuts, sort_by_duration=True))
    order = [durations[i] for batch in batches for i in batch]
    assert order == sorted(durations.values(), reverse=True) and len(batches) > 2
    per_rank = [_batches_ids(dm.test_dataloaders(cuts, 2, r, sort_by_duration=True)) for r in (0, 1)]
    seen = [[i for batch in batches for i in batch if not is_padding_duplicate(i)] for batches in per_rank]
    assert sorted(seen[0] + seen[1]) == sorted(durations)  # every cut once over the ranks
    for rank_ids in seen:
        assert [durations[i] for i in rank_ids] == sorted((durations[i] for i in rank_ids), reverse=True)


def test_batches_hold_fbank_text_and_custom_fields(fbank_dir):
    dm = _module(fbank_dir, "--max-duration", "6", "--enable-spec-aug", "true",
                 "--enable-noise-mix", "true", "--noise-cuts", "noise", "--noise-mix-prob", "1.0",
                 "--noise-snr", "10,20")
    batch = next(iter(dm.train_dataloaders(dm.load_cuts("source_train"))))
    assert isinstance(batch, SpeechBatch) and batch.input_kind == "fbank"
    inputs = batch.inputs
    assert inputs.ndim == 3 and inputs.shape[2] == 80 and torch.isfinite(inputs).all()
    assert len(batch.texts) == inputs.shape[0] == len(batch.durations)
    assert int(batch.input_lens.max()) == inputs.shape[1]
    assert all(t.startswith("call number") for t in batch.texts)
    assert all(i.startswith("utt") for i in batch.cut_ids)  # ids kept through mixing
    test_batch = next(iter(dm.test_dataloaders(dm.load_cuts("source_train"))))
    assert test_batch.cuts[0].seen_in_train is True


def test_fbank_batches_equal_lhotse_k2_dataset(fbank_dir):
    """The same inputs, lengths, texts and order as lhotse's K2SpeechRecognitionDataset
    (what the recipes trained on before), so results carry over."""
    from lhotse.dataset import K2SpeechRecognitionDataset

    cuts = _module(fbank_dir).load_cuts("source_train").to_eager()
    subset = cuts.subset(first=7)
    ours = SpeechDataset("fbank")[subset]
    theirs = K2SpeechRecognitionDataset(return_cuts=True)[subset]
    assert torch.equal(ours.inputs, theirs["inputs"])
    assert torch.equal(ours.input_lens, theirs["supervisions"]["num_frames"])
    assert ours.texts == list(theirs["supervisions"]["text"])
    assert ours.cut_ids == [c.id for c in theirs["supervisions"]["cut"]]


def test_waveform_input_from_the_same_cuts_resampled_and_mixed_down(fbank_dir, tmp_path):
    dm = _module(fbank_dir, "--max-duration", "100", "--shuffle", "false", input_kind="waveform")
    cuts = dm.load_cuts("three")
    batch = next(iter(dm.test_dataloaders(cuts)))
    assert batch.input_kind == "waveform" and batch.inputs.shape == (3, 32000)
    assert batch.input_lens.tolist() == [32000] * 3 and batch.durations == [2.0] * 3
    # The same audio at 8 kHz and in stereo arrives as 16 kHz mono.
    from lhotse import CutSet, Recording

    wave = np.sin(2 * np.pi * 300 * np.arange(8000) / 8000).astype(np.float32)
    sf.write(tmp_path / "low.wav", 0.3 * wave, 8000)
    sf.write(tmp_path / "stereo.flac", np.stack([0.2 * wave, 0.4 * wave], 1), 8000)
    fresh = CutSet.from_cuts(Recording.from_file(tmp_path / n).to_cut() for n in ("low.wav", "stereo.flac"))
    audio = SpeechDataset("waveform", require_text=False)[fresh]
    assert audio.inputs.shape == (2, 16000) and audio.texts == ["", ""]
    by_id = dict(zip(audio.cut_ids, audio.inputs))
    stereo = by_id[next(i for i in audio.cut_ids if "stereo" in i)]
    low = by_id[next(i for i in audio.cut_ids if "low" in i)]
    assert torch.allclose(stereo, low, atol=2e-3)  # the mean of 0.2x and 0.4x is 0.3x
    # No stored features: fbank is computed on the fly instead.
    feats = SpeechDataset("fbank", require_text=False)[fresh]
    assert feats.inputs.shape[:2] == (2, 100) and feats.inputs.shape[2] == 80


def test_cuts_without_transcripts_are_named(fbank_dir):
    from lhotse import CutSet
    from lhotse.testing.dummies import dummy_cut

    cut = dummy_cut(0, with_data=True)
    cut.supervisions = []
    with pytest.raises(MissingTranscriptError, match="dummy-mono-cut-0000 has no supervision"):
        SpeechDataset("waveform")[CutSet.from_cuts([cut])]


def test_cuts_are_named_by_flag_or_path(fbank_dir):
    dm = _module(fbank_dir)
    by_name = dm.load_cuts("three")
    by_path = dm.load_cuts(str(fbank_dir / f"{PREFIX}_cuts_three.jsonl.gz"))
    assert [c.id for c in by_name] == [c.id for c in by_path]
    assert split_name(str(fbank_dir / f"{PREFIX}_cuts_three.jsonl.gz")) == "three" == split_name("three")
    with pytest.raises(FileNotFoundError, match="corpus_cuts_nope.jsonl.gz does not exist"):
        dm.load_cuts("nope")
    with pytest.raises(ValueError, match="--cuts-prefix"):
        AsrDataModule(DataConfig(manifest_dir=str(fbank_dir))).load_cuts("three")


def test_on_the_fly_features_match_precomputed(fbank_dir):
    flags = ("--max-duration", "100", "--enable-spec-aug", "false", "--shuffle", "false")
    stored = next(iter(_module(fbank_dir, *flags).test_dataloaders(_module(fbank_dir).load_cuts("three"))))
    fly_dm = _module(fbank_dir, *flags, "--on-the-fly-feats", "true")
    fly = next(iter(fly_dm.test_dataloaders(fly_dm.load_cuts("three"))))
    assert fly.inputs.shape == stored.inputs.shape
    assert torch.allclose(fly.inputs, stored.inputs, atol=0.1)  # lilcom is lossy


def test_noise_mix_and_spec_aug_change_the_features(fbank_dir):
    common = ("--max-duration", "100", "--enable-spec-aug", "false", "--shuffle", "false", "--drop-last", "false")
    plain = _module(fbank_dir, *common)
    noisy = _module(fbank_dir, *common, "--enable-noise-mix", "true", "--noise-cuts", "noise",
                    "--noise-mix-prob", "1.0", "--noise-snr", "0")
    cuts = plain.load_cuts("three")
    a = next(iter(plain.train_dataloaders(cuts))).inputs
    b = next(iter(noisy.train_dataloaders(cuts))).inputs
    assert a.shape == b.shape and not torch.allclose(a, b)
    with pytest.raises(FileNotFoundError, match="noise"):
        _module(fbank_dir, "--enable-noise-mix", "true", "--noise-cuts", "/nonexistent.jsonl.gz") \
            .train_dataloaders(cuts)
    with pytest.raises(ValueError, match="needs --noise-cuts"):
        AsrDataModule(DataConfig(enable_noise_mix=True))


def test_sampler_state_dict_resumes_mid_epoch(fbank_dir):
    dm = _module(fbank_dir, "--max-duration", "3", "--enable-spec-aug", "false")
    cuts = dm.load_cuts("source_train")
    full = _batches_ids(dm.train_dataloaders(cuts))
    loader = dm.train_dataloaders(cuts)
    it = iter(loader)
    head = [next(it).cut_ids for _ in range(2)]
    state = loader.sampler.state_dict()
    resumed = _batches_ids(dm.train_dataloaders(cuts, sampler_state_dict=state))
    assert head == full[:2] and resumed == full[2:]


def test_workers_are_seeded(fbank_dir):
    def first_inputs(seed):
        dm = _module(fbank_dir, "--max-duration", "100", "--num-workers", "1", "--drop-last", "false",
                     "--enable-spec-aug", "true", "--spec-aug-time-warp-factor", "10", seed=seed)
        return next(iter(dm.train_dataloaders(dm.load_cuts("source_train")))).inputs

    assert torch.equal(first_inputs(3), first_inputs(3))
    assert not torch.equal(first_inputs(3), first_inputs(4))
    seeder = SeedWorkers(5, rank=1, sampler=None)
    seeder(0)
    a = torch.rand(3)
    seeder(0)
    assert torch.equal(a, torch.rand(3))


def _gloo_worker(rank, world_size, fbank_dir, out_dir):
    from speechadapt.training.dist import cleanup_dist, setup_dist

    setup_dist(rank, world_size)
    try:
        dm = _module(fbank_dir, "--max-duration", "3", "--drop-last", "false")
        ids = _batches_ids(dm.train_dataloaders(dm.load_cuts("source_train")))  # rank from the group
        (out_dir / f"rank{rank}.json").write_text(json.dumps(ids))
    finally:
        cleanup_dist()


def test_sampler_takes_rank_from_a_gloo_process_group(fbank_dir, tmp_path):
    from speechadapt.training.dist import launch

    launch(_gloo_worker, 2, fbank_dir, tmp_path)
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1])
    seen = [{i for b in batches for i in b if not is_padding_duplicate(i)} for batches in per_rank]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 13
