"""Zipformer encoder / Zipformer-CTC: icefall parity, padding, determinism, training."""

import json
from pathlib import Path

import pytest
import torch

from speechadapt.decoding.ctc import greedy_ctc_collapse
from speechadapt.models.ctc import ZipformerCtc
from speechadapt.models.zipformer import (
    ZipformerConfig,
    config_from_any,
    ZipformerEncoder,
    get_preset,
)
from speechadapt.models.zipformer.checkpoint import preset_shapes
from speechadapt.utils import config_to_dict

# Copies of shared/reference (produced by icefall's own Zipformer): the tests must not
# depend on a folder outside the repository, and must fail, not skip, without them.
REFERENCE_DIR = Path(__file__).resolve().parent / "data" / "reference"
TINY_REFERENCE = REFERENCE_DIR / "zipformer_tiny_reference.pt"
LARGE_KEYS = REFERENCE_DIR / "zipformer_large_keys.json"


@pytest.fixture(scope="module")
def reference():
    # The reference holds only tensors, numbers, strings, lists and dicts.
    return torch.load(TINY_REFERENCE, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def reference_ctc(reference):
    model = ZipformerCtc(ZipformerConfig(**reference["config"]), reference["vocab_size"])
    model.load_state_dict(reference["state_dict"], strict=True)
    return model.eval()


def test_reference_state_dict_keys_and_shapes(reference):
    model = ZipformerCtc(ZipformerConfig(**reference["config"]), reference["vocab_size"])
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference["state_dict"].items()}
    assert mine == theirs


def test_reference_encoder_output(reference):
    encoder = ZipformerEncoder(ZipformerConfig(**reference["config"]))
    encoder_state = {
        k: v for k, v in reference["state_dict"].items() if not k.startswith("ctc_output.")
    }
    encoder.load_state_dict(encoder_state, strict=True)
    encoder.eval()
    with torch.no_grad():
        out, out_lens = encoder(reference["x"], reference["x_lens"])
    assert encoder.output_dim == out.shape[-1] == max(reference["config"]["encoder_dim"])
    assert torch.equal(out_lens, reference["encoder_out_lens"])
    assert out.shape == reference["encoder_out"].shape
    assert (out - reference["encoder_out"]).abs().max().item() < 1e-4


def test_reference_ctc_log_probs_and_decode(reference, reference_ctc):
    with torch.no_grad():
        log_probs, out_lens = reference_ctc(reference["x"], reference["x_lens"])
        logits, logit_lens = reference_ctc.ctc_logits(reference["x"], reference["x_lens"])
    assert torch.equal(out_lens, reference["encoder_out_lens"])
    assert torch.equal(logit_lens, out_lens)
    assert (log_probs - reference["ctc_log_probs"]).abs().max().item() < 1e-4
    assert torch.allclose(logits.log_softmax(-1), log_probs, atol=1e-5)
    hyps = reference_ctc.greedy_decode(reference["x"], reference["x_lens"])
    expected = greedy_ctc_collapse(reference["ctc_log_probs"], out_lens, blank_id=0)
    assert hyps == expected


def test_greedy_collapse_rules():
    # frames: a a blank a b b (pad) -> [a, a, b]; padding frames ignored.
    ids = torch.tensor([[1, 1, 0, 1, 2, 2, 3]])
    log_probs = torch.nn.functional.one_hot(ids, 4).float().log()
    assert greedy_ctc_collapse(log_probs, torch.tensor([6]), blank_id=0) == [[1, 1, 2]]


def test_large_preset_keys_equal_icefall_json():
    data = json.loads(LARGE_KEYS.read_text())
    config = get_preset("large")
    for name, value in data["config"].items():
        assert getattr(config, name) == (tuple(value) if isinstance(value, list) else value)
    expected = {k: tuple(v) for k, v in data["keys"].items()}
    encoder_expected = {k: v for k, v in expected.items() if not k.startswith("ctc_output.")}
    assert preset_shapes("large") == encoder_expected
    with torch.device("meta"):
        model = ZipformerCtc(config, data["vocab_size"])
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert sum(v.numel() for v in model.state_dict().values()) == data["num_params"]


def test_config_accepts_lists_and_comma_strings():
    a = ZipformerConfig(num_encoder_layers="2,2,3,4,3,2", encoder_dim=[192, 256, 384, 512, 384, 256],
                        query_head_dim="32", value_head_dim=[12])
    b = get_preset("medium")
    assert a == b
    assert a.num_encoder_layers == (2, 2, 3, 4, 3, 2) and a.query_head_dim == 32
    assert config_from_any(config_to_dict(b)) == b
    with pytest.raises(ValueError, match="encoder_dim has 2 values"):
        ZipformerConfig(encoder_dim=(192, 256))
    with pytest.raises(ValueError, match="unknown Zipformer preset"):
        get_preset("huge")


def test_padding_changes_outputs_like_icefall_unless_pad_invariant(reference):
    """icefall's batched output depends slightly on the padding; pad_invariant removes it."""
    state = {k: v for k, v in reference["state_dict"].items() if not k.startswith("ctc_")}
    x, x_lens = reference["x"][:2], reference["x_lens"][:2]
    short_len = int(x_lens[1])
    results = {}
    for pad_invariant in (False, True):
        config = ZipformerConfig(**reference["config"], pad_invariant=pad_invariant)
        encoder = ZipformerEncoder(config)
        encoder.load_state_dict(state)
        encoder.eval()
        with torch.no_grad():
            batched, lens = encoder(x, x_lens)
            alone, alone_lens = encoder(x[1:2, :short_len], x_lens[1:2])
        assert int(alone_lens[0]) == int(lens[1])
        n = int(lens[1])
        results[pad_invariant] = (batched[1, :n] - alone[0, :n]).abs().max().item()
        # The longest input has no padding: the same output either way.
        assert (batched[0] - reference["encoder_out"][0]).abs().max().item() < 1e-4
    assert results[True] < 1e-4
    assert results[False] > 1e-3  # icefall's own behaviour, reproduced by default


def test_eval_mode_is_deterministic(reference_ctc, reference):
    with torch.no_grad():
        first, _ = reference_ctc(reference["x"], reference["x_lens"])
        second, _ = reference_ctc(reference["x"], reference["x_lens"])
    assert torch.equal(first, second)


def test_input_validation():
    encoder = ZipformerEncoder(get_preset("tiny"))
    with pytest.raises(ValueError, match="feature"):
        encoder(torch.zeros(1, 50, 40), torch.tensor([50]))
    with pytest.raises(ValueError, match="x_lens max"):
        encoder(torch.zeros(1, 50, 80), torch.tensor([60]))
    with pytest.raises(ValueError, match="9 frames"):
        encoder(torch.zeros(1, 50, 80), torch.tensor([5]))
