"""Parameter selection: all, LoRA only, norms only, by regex; clear errors."""

import pytest
import torch
from torch import nn

from speechadapt.adapt.param_select import (
    count_elements,
    mark_trainable,
    norm_parameter_names,
    select_parameters,
)


class BiasNorm(nn.Module):
    """Shaped like the Zipformer's only norm (a class name containing 'Norm')."""

    def __init__(self, dim):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.tensor(0.0))


class LoraLinear(nn.Module):
    def __init__(self, dim, rank=2):
        super().__init__()
        self.base = nn.Linear(dim, dim)
        self.lora_A = nn.Parameter(torch.zeros(rank, dim))
        self.lora_B = nn.Parameter(torch.zeros(dim, rank))


def make_model() -> nn.Module:
    return nn.ModuleDict(
        dict(
            proj=LoraLinear(4),
            ln=nn.LayerNorm(4),
            gn=nn.GroupNorm(2, 4),
            bn=nn.BatchNorm1d(4),
            bias_norm=BiasNorm(4),
            head=nn.Linear(4, 3),
        )
    )


def names(selected):
    return [n for n, _ in selected]


def test_all_returns_every_parameter_in_order():
    model = make_model()
    assert names(select_parameters(model)) == [n for n, _ in model.named_parameters()]


def test_lora_only():
    assert names(select_parameters(make_model(), "lora")) == ["proj.lora_A", "proj.lora_B"]


def test_norms_only_include_bias_norm_and_batch_norm():
    selected = names(select_parameters(make_model(), "norms"))
    assert selected == [
        "ln.weight", "ln.bias", "gn.weight", "gn.bias", "bn.weight", "bn.bias",
        "bias_norm.bias", "bias_norm.log_scale",
    ]
    assert "head.weight" not in norm_parameter_names(make_model())


def test_regex():
    selected = names(select_parameters(make_model(), "regex", pattern=r"^head\.|base\.bias$"))
    assert selected == ["proj.base.bias", "head.weight", "head.bias"]


def test_errors_are_clear():
    model = make_model()
    with pytest.raises(ValueError, match="matched none"):
        select_parameters(nn.Linear(2, 2), "lora")
    with pytest.raises(ValueError, match="matched none"):
        select_parameters(model, "regex", pattern="nothing_like_this")
    with pytest.raises(ValueError, match="needs a pattern"):
        select_parameters(model, "regex")
    with pytest.raises(ValueError, match="unknown parameter selection"):
        select_parameters(model, "biases")
    with pytest.raises(ValueError, match="only used with mode 'regex'"):
        select_parameters(model, "all", pattern="x")


def test_tied_weights_appear_once():
    emb = nn.Embedding(10, 4)
    out = nn.Linear(4, 10, bias=False)
    out.weight = emb.weight
    model = nn.Sequential(emb, out)
    assert len(select_parameters(model)) == 1


def test_mark_trainable_sets_requires_grad_only_on_the_selection():
    model = make_model()
    selected = select_parameters(model, "norms")
    assert mark_trainable(model, selected) == count_elements(selected) == 4 * 7 + 1
    chosen = set(names(selected))
    for name, p in model.named_parameters():
        assert p.requires_grad == (name in chosen)


def test_model_interface_groups_are_selectable():
    from speechadapt.models.ctc import ZipformerCtc
    from speechadapt.models.zipformer import get_preset

    model = ZipformerCtc(get_preset("tiny"), vocab_size=20)
    groups = model.parameter_groups()
    assert set(groups) == {"all", "norms", "frontend", "encoder", "decoder"}  # no LoRA or projector in CTC
    assert all(n.startswith("encoder_embed.") for n in names(select_parameters(model, "frontend")))
    assert names(select_parameters(model, "decoder")) == ["ctc_output.1.weight", "ctc_output.1.bias"]
    encoder = names(select_parameters(model, "encoder"))
    assert len(encoder) + 2 == len(names(select_parameters(model, "all")))
    norms = names(select_parameters(model, "norms"))
    assert norms and all(n in encoder for n in norms) and all("norm" in n for n in norms)
    with pytest.raises(ValueError, match="mode 'projector' matched none"):
        select_parameters(model, "projector")
