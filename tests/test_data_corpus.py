"""Synthetic corpus: determinism, held-out voices and sentences, manifests, fbank, BPE."""

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, load_manifest, validate
from lhotse.utils import compute_num_frames, fastcopy

from mini_corpus import wav_digests
from speechadapt.data import grammar
from speechadapt.data.bpe import VocabSizeError, prepare_lang_bpe
from speechadapt.data.espeak import UnknownVoiceError
from speechadapt.data.features import check_frame_counts, featurise_split
from speechadapt.data.manifests import (CUT_FIELDS, AudioFileError, load_recording,
                                        manifest_paths, rows_to_manifests,
                                        write_noise_manifests, write_split_manifests)
from speechadapt.data.noise import mix_at_snr, pink_noise, snr_db, white_noise
from speechadapt.data.synth import (ALL_SPLITS, NOISE_SPLIT, SOURCE_SPLITS, TARGET_SPLITS,
                                    CorpusConfig, plan_corpus, prepare_corpus, verify_voices)

TINY = dict(num_source_train=12, num_source_dev=3, num_source_test=3, num_target_adapt=3,
            num_target_dev=2, num_target_test=4, num_babble_pool=4, num_aug_noise_per_type=1,
            aug_noise_seconds=1.0, chunk_size=5, source_voices=["en-us", "en+m3", "en-us+f2"],
            target_voices=["en-gb-scotland", "en-029+m5"], seed=7)




@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The tiny corpus synthesised twice (2 jobs, then 1 job) from the same seed."""
    root = tmp_path_factory.mktemp("corpus")
    rows_a = prepare_corpus(CorpusConfig(**TINY), root / "a", num_jobs=2)
    rows_b = prepare_corpus(CorpusConfig(**TINY), root / "b", num_jobs=1)
    return root, rows_a, rows_b


# ---- grammar --------------------------------------------------------------------------


def test_grammar_has_enough_words_and_is_deterministic():
    assert len(grammar.vocabulary()) >= 300
    a, b = grammar.unique_sentences(500, seed=3), grammar.unique_sentences(500, seed=3)
    assert a == b and len(set(a)) == 500
    assert grammar.unique_sentences(50, seed=4) != a[:50]
    used = {w for s in grammar.unique_sentences(3000, seed=1) for w in s.split()}
    assert len(used) >= 300 and used <= grammar.vocabulary()


def test_number_words():
    assert grammar.number_words(342) == "three hundred and forty two"
    assert grammar.ordinal_words(23) == "twenty third"
    assert grammar.ordinal_words(30) == "thirtieth"
    with pytest.raises(ValueError):
        grammar.number_words(1000)


def test_plan_holds_out_sentences_and_voices():
    plan = plan_corpus(CorpusConfig(**{**TINY, "num_source_train": 200, "num_source_test": 50}))
    train = {r["text"] for r in plan["source_train"]}
    for split in ALL_SPLITS[1:]:
        assert not train & {r["text"] for r in plan[split]}, split
        assert all(r["seen_in_train"] is False for r in plan[split])
    assert {r["voice"] for r in plan["source_train"]} == set(TINY["source_voices"])
    assert {r["voice"] for s in TARGET_SPLITS for r in plan[s]} <= set(TINY["target_voices"])


def test_config_rejects_shared_voices_and_bad_ranges():
    with pytest.raises(ValueError, match="disjoint"):
        CorpusConfig(**{**TINY, "target_voices": ["en-us"]}).validate()
    with pytest.raises(ValueError, match="snr"):
        CorpusConfig(**{**TINY, "target_snr_db": [30.0, 20.0]}).validate()


def test_unknown_voice_fails_clearly():
    verify_voices(["en-us", "en+m3", "en-029"])
    with pytest.raises(UnknownVoiceError, match="en-gb\\+m3"):
        verify_voices(["en-us", "en-gb+m3"])  # espeak would silently keep en-us
    with pytest.raises(UnknownVoiceError, match="nosuch"):
        verify_voices(["en+nosuch"])


# ---- noise ----------------------------------------------------------------------------


def test_mix_at_snr_hits_the_requested_snr():
    rng = np.random.default_rng(0)
    speech = 0.1 * np.sin(np.linspace(0, 400, 16000))
    for noise in (white_noise(16000, rng), pink_noise(16000, rng)):
        mixed = mix_at_snr(speech, noise, 12.5)
        assert snr_db(speech, mixed - speech) == pytest.approx(12.5, abs=1e-6)


# ---- synthesis ------------------------------------------------------------------------


def test_corpus_is_deterministic_for_a_seed(corpus):
    root, rows_a, rows_b = corpus
    digest_a, digest_b = wav_digests(root / "a"), wav_digests(root / "b")
    assert len(digest_a) > 30
    assert digest_a == digest_b  # same bytes, whatever the number of jobs
    for split in TARGET_SPLITS:  # target noise identical across the two runs
        noise_a = [(r["noise_type"], r["snr_db"]) for r in rows_a[split]]
        assert noise_a == [(r["noise_type"], r["snr_db"]) for r in rows_b[split]]
        assert all(r["noise_type"] in ("pink", "babble") for r in rows_a[split])
        assert all(20.0 <= r["snr_db"] <= 30.0 for r in rows_a[split])


def test_corpus_voices_disjoint_and_audio_at_16k(corpus):
    _, rows, _ = corpus
    source = {r["voice"] for s in SOURCE_SPLITS for r in rows[s]}
    target = {r["voice"] for s in TARGET_SPLITS for r in rows[s]}
    assert source and target and not source & target
    row = rows["target_test"][0]
    noisy, rate = sf.read(row["audio"])
    clean, _ = sf.read(row["clean_audio"])
    assert rate == 16000 and noisy.shape == clean.shape and not np.allclose(noisy, clean)
    assert len(rows[NOISE_SPLIT]) == 3


# ---- manifests and features -------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests(corpus, tmp_path_factory):
    root, rows, _ = corpus
    out = tmp_path_factory.mktemp("manifests")
    cuts = {s: write_split_manifests(rows[s], s, out, "synth") for s in ("source_train", "target_test")}
    cuts[NOISE_SPLIT] = write_noise_manifests(rows[NOISE_SPLIT], out, "synth", NOISE_SPLIT)
    return out, cuts


def test_manifests_validate_and_carry_custom_fields(manifests):
    out, cuts = manifests
    for split in ("source_train", "target_test"):
        paths = manifest_paths(out, split, "synth")
        assert all(p.is_file() for p in paths.values())
        loaded = load_manifest(paths["cuts"])
        validate(loaded, read_data=True)
        cut = loaded[0]
        assert set(CUT_FIELDS) <= set(cut.custom)
        assert cut.id == cut.recording_id and cut.supervisions[0].text
    assert load_manifest(manifest_paths(out, "target_test", "synth")["cuts"])[0].domain == "target"
    assert all(c.noise_type in ("white", "pink", "babble") for c in cuts[NOISE_SPLIT])


def test_fbank_shapes_match_durations(manifests, tmp_path):
    _, cuts = manifests
    subset = cuts["source_train"].subset(first=4)
    feats = featurise_split(subset, tmp_path, "source_train", "synth", num_jobs=1, speed_perturb=True)
    assert len(feats) == 12  # originals + 0.9 + 1.1
    for cut in feats:
        matrix = cut.load_features()
        assert matrix.shape == (compute_num_frames(cut.duration, 0.01, 16000), 80)
    first = [c for c in feats if c.id.endswith("_sp0.9")][0]
    original = [c for c in feats if c.id == first.id.replace("_sp0.9", "")][0]
    assert first.duration == pytest.approx(original.duration / 0.9, rel=1e-3)
    broken = fastcopy(first, features=fastcopy(first.features, num_frames=first.num_frames + 5))
    with pytest.raises(ValueError, match=first.id):
        check_frame_counts(CutSet.from_cuts([broken]))


# ---- bad input ----------------------------------------------------------------------------


def _wav(path: Path, rate: int = 16000, seconds: float = 0.5) -> Path:
    sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(int(rate * seconds))), rate,
             subtype="PCM_16")
    return path


def test_corrupt_and_truncated_wavs_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(100))
    with pytest.raises(AudioFileError, match="corrupt.wav"):
        load_recording(corrupt, "c")
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(_wav(tmp_path / "full.wav").read_bytes()[:5000])
    with pytest.raises(AudioFileError, match="truncated.wav.*truncated"):
        load_recording(truncated, "t")
    garbage = tmp_path / "garbage.flac"
    garbage.write_bytes(b"not audio at all")
    with pytest.raises(AudioFileError, match="garbage.flac"):
        load_recording(garbage, "g")
    with pytest.raises(AudioFileError, match="missing.wav"):
        load_recording(tmp_path / "missing.wav", "m")


def test_wrong_sample_rate_is_resampled_or_rejected(tmp_path):
    path = _wav(tmp_path / "r22.wav", rate=22050, seconds=1.0)
    recording = load_recording(path, "r")
    assert recording.sampling_rate == 16000
    assert recording.load_audio().shape == (1, 16000)
    with pytest.raises(AudioFileError, match="r22.wav.*22050 Hz"):
        load_recording(path, "r", on_wrong_rate="error")


def test_empty_transcript_is_reported_and_skipped(tmp_path, caplog):
    rows = [{"id": "a", "audio": str(_wav(tmp_path / "a.wav")), "text": "call alice", "voice": "v"},
            {"id": "b", "audio": str(_wav(tmp_path / "b.wav")), "text": "   ", "voice": "v"}]
    with caplog.at_level(logging.WARNING):
        recordings, supervisions, skipped = rows_to_manifests(rows)
    assert skipped == ["b"] and len(recordings) == 1 and len(supervisions) == 1
    assert "empty transcript" in caplog.text and "b" in caplog.text


# ---- BPE ------------------------------------------------------------------------------------


def test_bpe_model_and_tokens(tmp_path):
    import sentencepiece as spm

    texts = grammar.unique_sentences(400, seed=5)
    model = prepare_lang_bpe(texts, tmp_path / "lang_bpe_60", vocab_size=60)
    tokens = (tmp_path / "lang_bpe_60" / "tokens.txt").read_text().split("\n")
    assert tokens[0] == "<blk> 0" and tokens[1] == "<sos/eos> 1" and tokens[2] == "<unk> 2"
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert sp.get_piece_size() == 60
    assert sp.decode(sp.encode(texts[0])) == texts[0]
    again = spm.SentencePieceProcessor(
        model_file=str(prepare_lang_bpe(texts, tmp_path / "again", vocab_size=60)))
    assert [(sp.id_to_piece(i), sp.get_score(i)) for i in range(60)] == \
        [(again.id_to_piece(i), again.get_score(i)) for i in range(60)]  # deterministic
    with pytest.raises(VocabSizeError, match="at most \\d+"):
        prepare_lang_bpe(["call alice", "call bob"] * 5, tmp_path / "lang_big", vocab_size=5000)


def test_parallel_fbank_equals_single_job(manifests, tmp_path, monkeypatch):
    from speechadapt.data import features

    _, cuts = manifests
    subset = cuts["source_train"].subset(first=4)
    single = features.compute_fbank(subset, tmp_path / "one", num_jobs=1)
    monkeypatch.setattr(features, "MIN_CUTS_PER_EXTRA_JOB", 1)
    parallel = features.compute_fbank(subset, tmp_path / "two", num_jobs=2)
    assert (tmp_path / "two").is_dir()  # one archive per job
    by_id = {c.id: c for c in parallel}
    for cut in single:
        np.testing.assert_array_equal(cut.load_features(), by_id[cut.id].load_features())
