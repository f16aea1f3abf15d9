"""Loading icefall checkpoint files: layout, restricted unpickling, mismatch reports."""

import pathlib
import pickle
import sys
import textwrap

import pytest
import torch

from speechadapt.models.ctc import ZipformerCtc
from speechadapt.models.zipformer import (
    ZipformerEncoder,
    get_preset,
    infer_preset,
    load_icefall_checkpoint,
    read_icefall_state_dict,
)


def _write_module(root, dotted: str, source: str) -> None:
    package, _, module = dotted.rpartition(".")
    folder = root / package.replace(".", "/")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").touch()
    (folder / f"{module}.py").write_text(textwrap.dedent(source))


def _save_with_foreign_module(tmp_path, dotted: str, source: str, build, filename: str):
    """torch.save an object built from a throw-away module, then forget the module."""
    root = tmp_path / "pkgs"
    _write_module(root, dotted, source)
    sys.path.insert(0, str(root))
    try:
        module = __import__(dotted, fromlist=["_"])
        path = tmp_path / filename
        torch.save(build(module), path)
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if n.split(".")[0] == dotted.split(".")[0]]:
            del sys.modules[name]
    return path


def _icefall_epoch_file(tmp_path, state_dict):
    """An epoch-N.pt in icefall's layout, with a pickled icefall.utils.AttributeDict."""

    def build(utils):
        params = utils.AttributeDict(
            {"batch_idx_train": 120, "encoder_dim": "32,48",
             "exp_dir": pathlib.Path("zipformer/exp")}
        )
        return {
            "model": state_dict,
            "optimizer": {"state": {}, "param_groups": []},
            "batch_idx_train": 120,
            "params": params,
        }

    source = "class AttributeDict(dict):\n    pass\n"
    return _save_with_foreign_module(tmp_path, "icefall.utils", source, build, "epoch-3.pt")


@pytest.fixture(scope="module")
def tiny_ctc_state():
    torch.manual_seed(0)
    return ZipformerCtc(get_preset("tiny"), vocab_size=11).state_dict()


def test_pretrained_layout_loads_and_matches(tmp_path, tiny_ctc_state):
    extra = {"decoder.embedding.weight": torch.zeros(11, 4), "joiner.output_linear.bias": torch.zeros(11)}
    path = tmp_path / "pretrained.pt"
    torch.save({"model": {**tiny_ctc_state, **extra}}, path)
    model = ZipformerCtc(get_preset("tiny"), vocab_size=11)
    info = load_icefall_checkpoint(path, model)
    assert info["ctc_loaded"] and info["preset"] == "tiny" and info["ignored_keys"] == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, tiny_ctc_state[key]), key
    # A plain encoder takes the encoder part of the same file.
    encoder = ZipformerEncoder(get_preset("tiny"))
    assert load_icefall_checkpoint(path, encoder)["ctc_loaded"] is False


def test_epoch_file_with_pickled_attribute_dict_loads(tmp_path, tiny_ctc_state):
    path = _icefall_epoch_file(tmp_path, tiny_ctc_state)
    assert "icefall" not in sys.modules
    with pytest.raises(pickle.UnpicklingError):  # plain weights_only refuses it
        torch.load(path, weights_only=True)
    state = read_icefall_state_dict(path)
    assert set(state) == set(tiny_ctc_state)
    model = ZipformerCtc(get_preset("tiny"), vocab_size=11)
    load_icefall_checkpoint(path, model)
    key = "encoder.encoders.3.encoder.layers.0.self_attn1.in_proj.weight"
    assert torch.equal(model.state_dict()[key], tiny_ctc_state[key])


@pytest.mark.parametrize("attribute", ["Plain", "Reducer"])
def test_non_allowlisted_class_is_refused(tmp_path, tiny_ctc_state, attribute):
    source = """
        import os
        class Plain:
            pass
        class Reducer:
            def __reduce__(self):
                return (os.getcwd, ())
    """

    def build(module):
        return {"model": tiny_ctc_state, "params": getattr(module, attribute)()}

    path = _save_with_foreign_module(tmp_path, "evilpkg.payload", source, build, "bad.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_icefall_checkpoint(path, ZipformerCtc(get_preset("tiny"), vocab_size=11))


def test_foreign_size_fails_with_listed_keys_and_preset_hint(tmp_path):
    with torch.device("meta"):
        small_shapes = ZipformerEncoder(get_preset("small")).state_dict()
    small_state = {k: torch.zeros(v.shape) for k, v in small_shapes.items()}
    assert infer_preset(small_state) == "small"
    path = tmp_path / "pretrained.pt"
    torch.save({"model": small_state}, path)
    with pytest.raises(ValueError) as error:
        load_icefall_checkpoint(path, ZipformerEncoder(get_preset("tiny")))
    message = str(error.value)
    assert "unexpected in file (" in message and "shape mismatches (" in message
    assert "encoder.encoders.0.layers.0.bypass_scale: file [192] vs model [32]" in message
    assert "'small' preset" in message


def test_other_architecture_fails_without_preset(tmp_path):
    conformer_like = {
        "encoder_embed.conv.0.weight": torch.zeros(8, 1, 3, 3),
        "encoder.encoder.layers.0.self_attn.in_proj_weight": torch.zeros(12, 4),
    }
    path = tmp_path / "conformer.pt"
    torch.save({"model": conformer_like}, path)
    with pytest.raises(ValueError) as error:
        load_icefall_checkpoint(path, ZipformerEncoder(get_preset("tiny")))
    message = str(error.value)
    assert "missing in file (" in message and "unexpected in file (1)" in message
    assert "no preset" in message


def test_wrong_vocab_size_is_reported(tmp_path, tiny_ctc_state):
    path = tmp_path / "pretrained.pt"
    torch.save({"model": tiny_ctc_state}, path)
    with pytest.raises(ValueError, match=r"ctc_output.1.weight: file \[11, 80\] vs model \[7, 80\]"):
        load_icefall_checkpoint(path, ZipformerCtc(get_preset("tiny"), vocab_size=7))


def test_missing_file_and_missing_model_entry(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_icefall_state_dict(tmp_path / "nope.pt")
    path = tmp_path / "other.pt"
    torch.save({"optimizer": {}, "epoch": 3}, path)
    with pytest.raises(ValueError, match="no 'model' state_dict"):
        read_icefall_state_dict(path)
