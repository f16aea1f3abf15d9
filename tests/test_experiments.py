"""Self-describing experiments: every model kind trains with ``bin.train`` on a
miniature corpus in the recipes' on-disk layout, writes its spec to model.json, and
``bin.decode`` rebuilds it from the experiment directory alone (no training flag
repeated), for Zipformer-CTC, LLM-ASR/MoSE, wav2vec2-CTC and Whisper."""

import json

import pytest
import torch

from speechadapt.bin import average_checkpoints, decode, train
from speechadapt.models.ctc import ZipformerCtc
from speechadapt.models.hf.fixtures import make_tiny_ctc, make_tiny_qwen2, make_tiny_whisper
from speechadapt.models.registry import SPEC_FILE, load_model, read_spec
from speechadapt.models.zipformer import get_preset
from speechadapt.training.averaging import WeightSelection

from mini_corpus import PREFIX, TEXTS, write_split  # noqa: E402 (tests/ is on sys.path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from speechadapt.data.bpe import prepare_lang_bpe

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("mini")
    write_split(root, "train", TEXTS, 0)
    write_split(root, "test", TEXTS[2:5], 2)
    prepare_lang_bpe(TEXTS, root / "lang_bpe_30", 30)
    return root


def data_flags(root):
    return ["--manifest-dir", str(root / "fbank"), "--cuts-prefix", PREFIX, "--max-duration", "6",
            "--num-workers", "0", "--enable-spec-aug", "false", "--num-buckets", "2"]


def common(root, exp, epochs=1):
    return ["--exp-dir", str(exp), "--train-split", "train", "--num-epochs", str(epochs), "--average-period", "1",
            "--tensorboard", "false", "--save-every-n", "0", *data_flags(root)]


def decode_alone(root, exp, *extra):
    """Decode with the experiment directory, the weights and the data only."""
    return decode.main(["--exp-dir", str(exp), "--test-sets", "test", *data_flags(root), *extra])


def test_zipformer_ctc_trains_and_decodes_from_its_directory(corpus, tmp_path):
    exp = tmp_path / "ctc"
    train.main(["--model", "zipformer_ctc", "--lang-dir", str(corpus / "lang_bpe_30"), "--regularize", "false",
                *common(corpus, exp, epochs=2)])
    spec = read_spec(exp)
    assert spec["kind"] == "zipformer_ctc" and spec["vocab_size"] == 30 and spec["encoder_config"]["regularize"] is False
    assert torch.load(exp / "epoch-2.pt", weights_only=True)["params"]["model_spec"] == spec
    wers = decode_alone(corpus, exp, "--epoch", "2", "--avg", "2")
    assert set(wers) == {"test"} and wers["test"] >= 0
    assert (exp / "decode" / "errs-test-greedy-epoch-2-avg-2.txt").is_file()
    record = json.loads((exp / "results.jsonl").read_text().splitlines()[-1])
    assert record["method"] == "zipformer-ctc" and record["extra"]["model_kind"] == "zipformer_ctc"
    assert record["ref_words"] == sum(len(t.split()) for t in TEXTS[2:5])
    # The averaged file carries the spec too, and decodes the same as the in-memory average.
    out = average_checkpoints.main(["--exp-dir", str(exp), "--epoch", "2", "--avg", "2"])
    assert torch.load(out, weights_only=True)["model_spec"] == spec
    assert decode_alone(corpus, exp, "--checkpoint", str(out))["test"] == wers["test"]
    with pytest.raises(ValueError, match="beam search"):
        decode_alone(corpus, exp, "--checkpoint", str(out), "--decoding-method", "beam")


def test_a_checkpoint_of_another_architecture_is_refused(corpus, tmp_path):
    exp = tmp_path / "ctc"
    train.main(["--model", "zipformer_ctc", "--lang-dir", str(corpus / "lang_bpe_30"), "--regularize", "false",
                *common(corpus, exp)])
    other = tmp_path / "small.pt"
    torch.save({"model": ZipformerCtc(get_preset("tiny", encoder_dim=(32, 48, 64, 64, 64, 48)), 30).state_dict()},
               other)
    with pytest.raises(ValueError, match="small.pt does not fit the model of .*model.json.*shape mismatch"):
        load_model(exp, WeightSelection(checkpoint=str(other)))
    with pytest.raises(FileNotFoundError, match="model.json does not exist"):
        load_model(tmp_path, WeightSelection(checkpoint=str(other)))


def test_mose_trains_and_decodes_from_its_directory(corpus, tmp_path):
    llm_dir = make_tiny_qwen2(tmp_path / "qwen2", TEXTS, tokenizer_vocab_size=300, hidden_size=64,
                              intermediate_size=128)
    ckpts = []
    for seed in (0, 1):  # two encoders that differ
        torch.manual_seed(seed)
        ckpts.append(tmp_path / f"ctc{seed}.pt")
        torch.save({"model": ZipformerCtc(get_preset("tiny"), vocab_size=40).state_dict()}, ckpts[-1])
    exp = tmp_path / "mose"
    train.main(["--model", "llm_asr", "--llm-dir", str(llm_dir), "--encoder-ckpt", ",".join(map(str, ckpts)),
                "--lora-r", "4", "--lora-alpha", "8", "--mose-slot-dropout", "0.3", "--base-lr", "1e-3",
                *common(corpus, exp, epochs=2)])
    spec = read_spec(exp)
    assert spec["kind"] == "llm_asr" and spec["encoder_ckpt"] == [str(p.resolve()) for p in ckpts]
    assert spec["config"]["mose_slot_dropout"] == 0.3 and spec["config"]["lora_r"] == 4
    saved = torch.load(exp / "epoch-2.pt", weights_only=True)
    assert saved["params"]["trainable_only"] is True  # the kind's training default
    assert not any(k.startswith("encoders.") for k in saved["model"])
    assert any(k.startswith("projectors.1.") for k in saved["model"])
    assert "projectors.1.out_norm.weight" in saved["model"]  # the projector norm is on by default
    # A spec written before the projector norm existed rebuilds the projector it trained.
    from speechadapt.models.llm_asr_build import rebuild_llm_asr_model

    old_spec = dict(spec, config={k: v for k, v in spec["config"].items() if k != "projector_norm"})
    assert all(p.out_norm is None for p in rebuild_llm_asr_model(old_spec).projectors)

    wers = decode_alone(corpus, exp, "--epoch", "2", "--use-averaged-model", "true", "--max-new-tokens", "8")
    key = "greedy-epoch-2-avg-1-use-averaged-model"
    for kind in ("recogs", "errs", "wer-summary"):
        assert (exp / "decode" / f"{kind}-test-{key}.txt").is_file()
    assert len((exp / "decode" / f"recogs-test-{key}.txt").read_text().splitlines()) == 2 * 3
    record = json.loads((exp / "results.jsonl").read_text().splitlines()[-1])
    assert record["method"] == "mose" and record["wer"] == pytest.approx(wers["test"], abs=1e-3)
    beam = decode_alone(corpus, exp, "--checkpoint", str(exp / "epoch-2.pt"), "--decoding-method", "beam",
                        "--beam-size", "2", "--max-new-tokens", "8")
    assert (exp / "decode" / "errs-test-beam2-epoch-2.txt").is_file() and beam["test"] >= 0
    # A frozen part that changed since training would silently decode garbage: refused.
    torch.manual_seed(5)
    torch.save({"model": ZipformerCtc(get_preset("tiny"), vocab_size=40).state_dict()}, ckpts[1])
    with pytest.raises(ValueError, match="changed since"):
        decode_alone(corpus, exp, "--epoch", "2")


@pytest.mark.parametrize("kind", ["hf_ctc", "whisper"])
def test_waveform_models_train_and_decode_from_their_directory(corpus, tmp_path, kind):
    model_dir = (make_tiny_ctc(tmp_path / "w2v", kind="wav2vec2") if kind == "hf_ctc"
                 else make_tiny_whisper(tmp_path / "whisper", TEXTS))
    exp = tmp_path / kind
    train.main(["--model", kind, "--model-dir", str(model_dir), "--base-lr", "1e-4", *common(corpus, exp)])
    spec = read_spec(exp)
    assert spec["kind"] == kind and spec["model_dir"] == str(model_dir.resolve())
    model, name = load_model(exp, WeightSelection(epoch=1))
    assert model.input_kind == "waveform" and name == "epoch-1-avg-1"
    saved = torch.load(exp / "epoch-1.pt", weights_only=True)["model"]
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in saved.items())  # the trained weights, not the base ones
    wers = decode_alone(corpus, exp, "--epoch", "1", "--max-new-tokens", "6")
    assert wers["test"] >= 0
    record = json.loads((exp / "results.jsonl").read_text().splitlines()[-1])
    assert record["method"] == ("wav2vec2-ctc" if kind == "hf_ctc" else "whisper")


def test_train_refuses_missing_inputs_before_starting(corpus, tmp_path):
    ckpt = tmp_path / "enc.pt"
    ckpt.write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        train.main(["--model", "llm_asr", "--llm-dir", str(tmp_path / "no_such_llm"), "--encoder-ckpt", str(ckpt),
                    *common(corpus, tmp_path / "exp")])
    message = str(exc.value)
    assert "no_such_llm" in message and "does not exist" in message
    assert "Qwen/Qwen2-1.5B-Instruct" in message and "--llm-dir" in message
    with pytest.raises(SystemExit, match="cuts 'nope'.*mini_cuts_nope.jsonl.gz does not exist"):
        train.main(["--model", "zipformer_ctc", "--lang-dir", str(corpus / "lang_bpe_30"),
                    *common(corpus, tmp_path / "exp"), "--train-split", "nope"])
    with pytest.raises(SystemExit, match="--cuts-prefix"):
        train.main(["--model", "zipformer_ctc", "--lang-dir", str(corpus / "lang_bpe_30"),
                    *common(corpus, tmp_path / "exp"), "--cuts-prefix", ""])
    assert not (tmp_path / "exp" / SPEC_FILE).exists()
