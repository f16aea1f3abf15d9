"""Loaders: clear messages for missing/incomplete directories, no hub access, fixture CLI."""

import importlib.util
import json
import shutil
import socket
from pathlib import Path

import pytest
import torch

from speechadapt.models.hf import ModelDirError, check_model_dir, load_hf_ctc, load_qwen2, load_whisper, resolve_dtype
from speechadapt.models.hf.fixtures import make_tiny_ctc, make_tiny_qwen2, make_tiny_whisper

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_load")
    return {
        "qwen2": make_tiny_qwen2(root / "qwen2"),
        "whisper": make_tiny_whisper(root / "whisper"),
        "wav2vec2": make_tiny_ctc(root / "wav2vec2", kind="wav2vec2"),
        "hubert": make_tiny_ctc(root / "hubert", kind="hubert"),
    }


@pytest.mark.parametrize(
    "loader, public",
    [
        (load_qwen2, "Qwen/Qwen2-1.5B-Instruct"),
        (load_whisper, "openai/whisper-large-v3"),
        (load_hf_ctc, "facebook/wav2vec2-base-960h"),
    ],
)
def test_missing_directory_message(tmp_path, loader, public):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelDirError) as err:
        loader(missing)
    message = str(err.value)
    assert str(missing) in message and "does not exist" in message
    assert public in message and "config.json" in message and "model.safetensors" in message
    assert isinstance(err.value, FileNotFoundError)


def test_missing_ctc_config_names_both_families(tmp_path):
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(ModelDirError) as err:
        load_hf_ctc(tmp_path)
    message = str(err.value)
    assert "facebook/wav2vec2-base-960h" in message and "facebook/hubert-large-ls960-ft" in message
    assert "config.json" in message.split("Expected")[0]


def _copy(src: Path, dst: Path, drop=()):
    shutil.copytree(src, dst)
    for name in drop:
        (dst / name).unlink()
    return dst


@pytest.mark.parametrize(
    "kind, drop, named",
    [
        ("qwen2", ["model.safetensors"], "model.safetensors"),
        ("qwen2", ["tokenizer.json"], "tokenizer.json"),
        ("whisper", ["processor_config.json"], "preprocessor_config.json"),
        ("wav2vec2", ["vocab.json"], "vocab.json"),
        ("hubert", ["config.json"], "config.json"),
    ],
)
def test_incomplete_directory_names_missing_file(dirs, tmp_path, kind, drop, named):
    broken = _copy(dirs[kind], tmp_path / kind, drop)
    loader = {"qwen2": load_qwen2, "whisper": load_whisper}.get(kind, load_hf_ctc)
    with pytest.raises(ModelDirError) as err:
        loader(broken)
    missing_part = str(err.value).split("Expected files")[0]
    assert "incomplete" in missing_part or kind == "hubert"
    assert named in missing_part


def test_sharded_index_with_missing_shard(dirs, tmp_path):
    broken = _copy(dirs["qwen2"], tmp_path / "sharded", ["model.safetensors"])
    index = {"metadata": {}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                                            "b.weight": "model-00002-of-00002.safetensors"}}
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    (broken / "model-00001-of-00002.safetensors").write_bytes(b"")
    with pytest.raises(ModelDirError, match="model-00002-of-00002.safetensors") as err:
        check_model_dir(broken, "qwen2")
    assert "model-00001-of-00002" not in str(err.value).split("Expected files")[0]


def test_hub_name_is_not_looked_up():
    with pytest.raises(ModelDirError, match="does not exist"):
        load_qwen2("Qwen/Qwen2-1.5B-Instruct")


def test_resolve_dtype():
    assert resolve_dtype(None) is None
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("float16") is torch.float16
    assert resolve_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int3")


class NetworkAttempt(RuntimeError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise NetworkAttempt(f"network access attempted: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_no_network_needed(dirs, no_network):
    with pytest.raises(NetworkAttempt):  # the guard itself works
        socket.create_connection(("huggingface.co", 443))
    model, tok = load_qwen2(dirs["qwen2"])
    out = model.generate(**tok(["call alice"], return_tensors="pt"), max_new_tokens=2, do_sample=False)
    assert out.shape[0] == 1
    whisper, processor = load_whisper(dirs["whisper"])
    features = processor.feature_extractor([torch.zeros(4000).numpy()], sampling_rate=16000,
                                           return_tensors="pt").input_features
    assert whisper.generate(features, language="en", task="transcribe", max_new_tokens=2).shape[0] == 1
    for kind in ("wav2vec2", "hubert"):
        adapter = load_hf_ctc(dirs[kind])
        assert len(adapter.greedy_decode(torch.randn(1, 4000), torch.tensor([4000]))) == 1


def _load_cli():
    spec = importlib.util.spec_from_file_location("make_fixtures", REPO / "local" / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_fixtures_cli(tmp_path, capsys):
    cli = _load_cli()
    text = tmp_path / "text"
    text.write_text("".join(f"utt{i} xylophone quartet number {i}\n" for i in range(30)))
    written = cli.main(["--out-dir", str(tmp_path / "fx"), "--text", str(text), "--text-has-ids", "true",
                        "--which", "qwen2,hubert"])
    assert set(written) == {"qwen2", "hubert"} and json.loads(capsys.readouterr().out) == written
    assert not (tmp_path / "fx" / "whisper").exists()
    _, tok = load_qwen2(written["qwen2"])
    assert len(tok("xylophone", add_special_tokens=False)["input_ids"]) == 1  # learned from --text
    assert "utt" not in tok.get_vocab()  # the ids were stripped
    assert load_hf_ctc(written["hubert"]).model.config.model_type == "hubert"
    with pytest.raises(SystemExit):
        cli.main(["--out-dir", str(tmp_path), "--which", "gpt5"])
