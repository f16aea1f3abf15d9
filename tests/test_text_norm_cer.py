"""Scoring text in any script: combining marks stay in words, the --text-norm choice
(default, Whisper's own, none) reaches the decoders, and every record carries the CER."""

import pytest
import torch

from speechadapt.data.batch import SpeechBatch
from speechadapt.decoding.results import decode_dataloader, write_decode_results
from speechadapt.decoding.scoring import read_results
from speechadapt.decoding.text_norm import characters, make_normalizer, normalize_words
from speechadapt.models.interface import DecodeOptions

HINDI = "नमस्ते, आप कैसे हैं?"


def test_default_normaliser_keeps_devanagari_vowel_signs_and_virama():
    assert normalize_words(HINDI) == ["नमस्ते", "आप", "कैसे", "हैं"]
    assert normalize_words("के") != normalize_words("का")  # two words, not one bare consonant
    assert normalize_words("Don't STOP -- now!") == ["don't", "stop", "now"]  # English as before


def test_whisper_normaliser_is_whispers_own_and_none_is_a_plain_split():
    basic = make_normalizer("whisper", "hi")
    assert basic(HINDI) == ["नमस", "त", "आप", "क", "स", "ह"]  # marks -> spaces, as Whisper's basic one does
    english = make_normalizer("whisper", "en")
    assert english("Mr. Smith won't pay $20.") == ["mister", "smith", "will", "not", "pay", "$20"]
    assert make_normalizer("none")("Hello, World") == ["Hello,", "World"]
    with pytest.raises(ValueError, match="unknown text normaliser 'lower'"):
        make_normalizer("lower")


def test_decode_options_pick_the_normaliser_by_model_language_and_name_the_files():
    class Whisperish:
        language = "hi"

    opts = DecodeOptions(text_norm="whisper")
    assert opts.normalizer(Whisperish())("कैसे") == ["क", "स"]
    assert opts.key("best-step-4") == "greedy-best-step-4-norm-whisper"
    assert DecodeOptions().key("best-step-4") == "greedy-best-step-4"  # the default's files keep their names
    batch = SpeechBatch(torch.zeros(1, 1600), torch.tensor([1600]), ["Hello, World"], ["u"], [0.1], "waveform")
    results, _ = decode_dataloader(lambda b: ["hello world"], [batch], normalize=make_normalizer("none"))
    assert results == [("u", ["Hello,", "World"], ["hello", "world"])]


def test_records_carry_the_cer_over_characters_with_spaces(tmp_path):
    results = [("u1", ["abc", "de"], ["abd", "de"]), ("u2", ["x"], [])]
    assert characters(["abc", "de"]) == list("abc de")
    write_decode_results(results, tmp_path, "test", "k", "m")
    record = read_results(tmp_path / "results.jsonl")[0]
    assert record["extra"]["ref_chars"] == 6 + 1
    assert record["extra"]["cer"] == pytest.approx(100 * 2 / 7, abs=1e-3)  # one substitution, one deletion
    assert record["wer"] == pytest.approx(100 * 2 / 3, abs=1e-3)
