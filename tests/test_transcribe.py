"""transcribe: your own audio at any rate and channel count, for any model kind,
rebuilt from the experiment directory; bad files named before the model loads."""

import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from speechadapt.bin import transcribe
from speechadapt.models.ctc import ZipformerCtc
from speechadapt.models.hf.fixtures import make_tiny_ctc
from speechadapt.models.registry import HfCtcOptions, ZipformerCtcOptions, get_kind, write_spec

TEXTS = ["turn on the lights", "call alice now", "play some music", "open the door"]


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    mono16 = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    sf.write(root / "mono16.wav", mono16, 16000, subtype="FLOAT")
    sf.write(root / "same_stereo.flac", np.stack([mono16, mono16], 1), 16000, subtype="PCM_24")
    sf.write(root / "mono16_24.flac", mono16, 16000, subtype="PCM_24")
    sf.write(root / "low.wav", (0.1 * rng.standard_normal(12000)).astype(np.float32), 8000, subtype="FLOAT")
    (root / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage that is not audio")
    return root


def save_experiment(exp, model):
    write_spec(exp, model.spec())
    torch.save({"model": model.state_dict()}, exp / "epoch-1.pt")


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    from speechadapt.data.bpe import prepare_lang_bpe

    root = tmp_path_factory.mktemp("exps")
    prepare_lang_bpe(TEXTS, root / "lang", 25)
    torch.manual_seed(0)
    ctc = get_kind("zipformer_ctc").build(ZipformerCtcOptions(lang_dir=str(root / "lang")), "cpu")
    assert isinstance(ctc, ZipformerCtc)
    save_experiment(root / "ctc", ctc)
    w2v = get_kind("hf_ctc").build(HfCtcOptions(model_dir=str(make_tiny_ctc(root / "w2v"))), "cpu")
    save_experiment(root / "w2v", w2v)
    return root


def run(exp, *inputs, extra=()):
    return transcribe.main(["--exp-dir", str(exp), "--epoch", "1", *map(str, inputs), *extra])


@pytest.mark.parametrize("kind", ["ctc", "w2v"])
def test_any_rate_and_stereo_are_transcribed_in_input_order(experiments, audio, kind, caplog, capsys):
    with caplog.at_level(logging.INFO):
        lines = run(experiments / kind, audio / "low.wav", audio / "same_stereo.flac", audio / "mono16_24.flac")
    assert [utt for utt, _ in lines] == ["low", "same_stereo", "mono16_24"]
    assert all(isinstance(text, str) for _, text in lines)
    assert "sample rate 8000 Hz, resampling to 16000 Hz" in caplog.text
    assert "same_stereo.flac: 2 channels, mixed down to mono" in caplog.text
    # identical channels mixed down are the mono file itself: the same transcript
    assert lines[1][1] == lines[2][1]
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{utt} {text}" for utt, text in lines]


def test_wav_scp_and_output_file(experiments, audio, tmp_path):
    scp = tmp_path / "wav.scp"
    scp.write_text(f"b {audio / 'mono16.wav'}\na {audio / 'low.wav'}\n")
    lines = run(experiments / "ctc", extra=["--wav-scp", str(scp), "--output", str(tmp_path / "hyps.txt")])
    assert [utt for utt, _ in lines] == ["b", "a"]
    assert (tmp_path / "hyps.txt").read_text() == "".join(f"{u} {t}\n" for u, t in lines)


def test_bad_inputs_are_named_before_the_model_loads(experiments, audio, tmp_path):
    with pytest.raises(SystemExit) as exc:
        run(tmp_path / "no_such_exp", audio / "mono16.wav", audio / "corrupt.wav", tmp_path / "missing.flac")
    message = str(exc.value)
    assert "2 of 3 inputs cannot be used" in message
    assert "corrupt.wav" in message and "missing.flac: audio file does not exist" in message
    with pytest.raises(SystemExit, match="two inputs share the id 'mono16'"):
        run(experiments / "ctc", audio / "mono16.wav", audio / "mono16.wav")
    with pytest.raises(SystemExit, match="nothing to transcribe"):
        run(experiments / "ctc")
