"""Weight-space merging (Speech-FT): the formula, LoRA folding, bad input, the entry point
and its alpha sweep on a trained Zipformer-CTC."""

import json
import shutil

import pytest
import torch
from torch import nn

from speechadapt.adapt.merge import fold_lora, merge_state_dicts, without_lora
from speechadapt.bin import decode, finetune, merge, tta

from mini_corpus import data_flags  # noqa: E402 (tests/ is on sys.path)


def states(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g, dtype=torch.float64),
             "count": torch.tensor(10 * (i + 1))} for i in range(n)]


def test_the_formula_on_several_models_keeps_integers_and_unselected_keys():
    base, *tuned = states(4)
    out = merge_state_dicts(base, tuned, 0.3)
    mean_w = sum(t["w"] for t in tuned) / 3
    assert torch.allclose(out["w"], base["w"] + 0.3 * (mean_w - base["w"]), atol=1e-6)
    assert out["b"].dtype == torch.float64 and torch.allclose(out["b"], base["b"] + 0.3 * (
        sum(t["b"] for t in tuned) / 3 - base["b"]))
    assert out["count"] == base["count"]  # a batch counter is not interpolated
    assert torch.equal(merge_state_dicts(base, tuned, 0.0)["w"], base["w"])
    assert torch.allclose(merge_state_dicts(base, tuned[:1], 1.0)["w"], tuned[0]["w"])
    only_b = merge_state_dicts(base, tuned, 0.5, exclude=["^w$"])
    assert torch.equal(only_b["w"], base["w"]) and not torch.equal(only_b["b"], base["b"])
    assert torch.equal(merge_state_dicts(base, tuned, 0.5, include=["^w$"])["b"], base["b"])
    head = dict(tuned[0], head=torch.ones(2))
    assert "head" not in merge_state_dicts(base, [head], 0.5)
    assert torch.equal(merge_state_dicts(base, [head], 0.5, keep_extra_keys=True)["head"], torch.ones(2))
    assert torch.allclose(merge_state_dicts(base, tuned[:1], 1.5, allow_extrapolation=True)["w"],
                          base["w"] + 1.5 * (tuned[0]["w"] - base["w"]), atol=1e-6)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("w"), "w (shape (3, 4) in the base model) is missing from tuned-A"),
    (lambda s: s.__setitem__("w", torch.zeros(4, 3)), "w: shape (3, 4) in the base model but (4, 3) in tuned-A"),
    (lambda s: s.__setitem__("q.lora_A.default.weight", torch.zeros(2, 2)), "tuned-A holds LoRA factors"),
])
def test_mismatched_keys_shapes_and_unfolded_lora_are_named(change, message):
    base, tuned = states(2)
    change(tuned)
    with pytest.raises((KeyError, ValueError), match=message.replace("(", r"\(").replace(")", r"\)")):
        merge_state_dicts(base, [tuned], 0.5, names=["tuned-A"])


@pytest.mark.parametrize("alpha", [-0.1, 1.01, float("nan")])
def test_alpha_outside_the_unit_interval_is_refused(alpha):
    base, tuned = states(2)
    with pytest.raises(ValueError, match="alpha"):
        merge_state_dicts(base, [tuned], alpha)


def test_lora_folding_equals_peft_merge_and_unload():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5))
    model = get_peft_model(net, LoraConfig(r=2, lora_alpha=6, target_modules=["0", "2"], lora_dropout=0.0))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_()  # peft starts B at zero: make the adapters do something
    model.eval()
    x = torch.randn(4, 6)
    folded = fold_lora(model)
    reference = model.merge_and_unload()
    ref_state = reference.state_dict()
    for key, value in without_lora(folded).items():
        assert torch.allclose(value, ref_state[key.replace("base_model.model.", "").replace("base_layer.", "")],
                              atol=1e-6), key
    again = get_peft_model(nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5)),
                           LoraConfig(r=2, lora_alpha=6, target_modules=["0", "2"], lora_dropout=0.0)).eval()
    again.load_state_dict(folded)  # the folded state still fits the LoRA-wrapped layout
    assert torch.allclose(again(x), reference(x), atol=1e-5)


@pytest.fixture(scope="module")
def tuned_pair(trained_mini_ctc, tmp_path_factory):
    """The mini Zipformer-CTC and a few AdamW updates of it on the adaptation split."""
    root = trained_mini_ctc
    exp = tmp_path_factory.mktemp("merge") / "ft"
    finetune.main(["--source-exp-dir", str(root / "src"), "--epoch", "1", "--exp-dir", str(exp),
                   "--train-split", "adapt", "--optimizer", "adamw", "--base-lr", "3e-3", "--max-steps", "4",
                   "--tensorboard", "false", *data_flags(root)])
    return root, exp


def test_merge_writes_a_checkpoint_every_entry_point_loads(tuned_pair, tmp_path):
    root, ft = tuned_pair
    out = tmp_path / "m" / "merged.pt"
    alpha = merge.main(["--base", str(root / "src" / "epoch-1.pt"), "--finetuned", str(ft / "last.pt"),
                        "--alpha", "0.25", "--out", str(out), *data_flags(root)])
    assert alpha == 0.25 and (out.parent / "model.json").is_file()
    base = torch.load(root / "src" / "epoch-1.pt", weights_only=True)["model"]
    tuned = torch.load(ft / "last.pt", weights_only=True)["model"]
    merged = torch.load(out, weights_only=True)
    assert merged["merge"]["alpha"] == 0.25 and set(merged["model"]) == set(base)
    key = next(k for k, v in base.items() if v.is_floating_point() and not torch.equal(v, tuned[k]))
    assert torch.allclose(merged["model"][key], base[key] + 0.25 * (tuned[key] - base[key]), atol=1e-6)
    assert "test" in decode.main(["--exp-dir", str(out.parent), "--checkpoint", str(out), "--test-sets", "test",
                                  *data_flags(root)])
    tta.main(["--source-exp-dir", str(out.parent), "--checkpoint", str(out), "--exp-dir", str(tmp_path / "tta"),
              "--test-sets", "test", "--steps", "1", *data_flags(root)])
    assert (tmp_path / "tta" / "results.jsonl").is_file()


def test_the_sweep_decodes_every_alpha_and_picks_by_the_stated_rule(tuned_pair, tmp_path):
    root, ft = tuned_pair
    out = tmp_path / "sweep" / "merged.pt"
    alpha = merge.main(["--base", str(root / "src" / "epoch-1.pt"), "--finetuned", str(ft / "last.pt"),
                        "--alphas", "0:1:0.5", "--tune-sets", "dev,adapt", "--test-sets", "test",
                        "--out", str(out), *data_flags(root)])
    points = [json.loads(line) for line in (out.parent / "sweep.jsonl").read_text().splitlines()]
    assert [p["alpha"] for p in points] == [0.0, 0.5, 1.0]
    assert alpha == merge.pick_alpha(points, "dev", "adapt", 0.05)["alpha"]
    records = [json.loads(line) for line in (out.parent / "results.jsonl").read_text().splitlines()]
    sweep = [r for r in records if r["extra"]["family"] == "merge-sweep"]
    assert len(sweep) == 6 and {r["extra"]["alpha"] for r in sweep} == {0.0, 0.5, 1.0}
    test = [r for r in records if r["extra"]["family"] == "merge"]
    assert [r["test_set"] for r in test] == ["test"] and test[0]["extra"]["alpha"] == alpha


def test_pick_rule_respects_the_source_tolerance():
    points = [dict(alpha=0.0, s=10.0, t=30.0), dict(alpha=0.5, s=10.4, t=20.0), dict(alpha=1.0, s=12.0, t=15.0)]
    assert merge.pick_alpha(points, "s", "t", 0.05)["alpha"] == 0.5
    assert merge.pick_alpha(points, "s", "t", 0.25)["alpha"] == 1.0
    assert merge.pick_alpha(points, "s", "t", 0.0)["alpha"] == 0.0


def test_different_architectures_and_bad_alphas_are_refused(tuned_pair, tmp_path):
    root, ft = tuned_pair
    other = tmp_path / "other"
    shutil.copytree(ft, other)
    spec = json.loads((other / "model.json").read_text())
    spec["vocab_size"] = spec.get("vocab_size", 0) + 7
    (other / "model.json").write_text(json.dumps(spec))
    base = ["--base", str(root / "src" / "epoch-1.pt"), "--out", str(tmp_path / "x" / "m.pt"), *data_flags(root)]
    with pytest.raises(SystemExit) as e:
        merge.main([*base, "--finetuned", str(other / "last.pt"), "--alpha", "0.5"])
    assert "different model from the base" in str(e.value) and "vocab_size" in str(e.value)
    with pytest.raises(SystemExit) as e:
        merge.main([*base, "--finetuned", str(ft / "last.pt"), "--alpha", "1.5"])
    assert "--allow-extrapolation" in str(e.value)
    with pytest.raises(SystemExit) as e:
        merge.main([*base, "--finetuned", str(tmp_path / "missing.pt"), "--alpha", "0.5"])
    assert "missing.pt does not exist" in str(e.value)
    assert not (tmp_path / "x" / "m.pt").exists()


def test_an_adapter_only_llm_asr_merges_with_its_lora_folded_and_loads_back(tmp_path):
    from speechadapt.models.hf.fixtures import make_tiny_qwen2
    from speechadapt.models.llm_asr_build import LlmAsrOptions, build_llm_asr_model
    from speechadapt.models.registry import load_model, write_spec
    from speechadapt.models.ctc import ZipformerCtc
    from speechadapt.models.zipformer import get_preset
    from speechadapt.training.averaging import WeightSelection

    torch.manual_seed(0)
    llm_dir = make_tiny_qwen2(tmp_path / "qwen2", ["turn on the lights", "call alice"], tokenizer_vocab_size=300,
                              hidden_size=64, intermediate_size=128)
    torch.save({"model": ZipformerCtc(get_preset("tiny"), vocab_size=40).state_dict()}, tmp_path / "enc.pt")
    options = LlmAsrOptions(llm_dir=str(llm_dir), encoder_ckpt=[str(tmp_path / "enc.pt")], lora_r=4, lora_alpha=8)
    files = []
    for seed, name in ((1, "base"), (2, "tuned")):  # two LoRA runs: different A and B
        model = build_llm_asr_model(options)
        torch.manual_seed(seed)
        state = model.trainable_state_dict()
        state = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
        (tmp_path / name).mkdir()
        write_spec(tmp_path / name, model.spec())
        torch.save({"model": state}, tmp_path / name / "adapter.pt")
        files.append(tmp_path / name / "adapter.pt")
    out = tmp_path / "merged" / "merged.pt"
    merge.main(["--base", str(files[0]), "--finetuned", str(files[1]), "--alpha", "0.5", "--out", str(out)])
    merged, _ = load_model(out.parent, WeightSelection(checkpoint=str(out)))
    members = [load_model(f.parent, WeightSelection(checkpoint=str(f)))[0] for f in files]
    key = next(n for n, _ in merged.named_modules() if n.endswith("q_proj") and hasattr(_, "lora_A"))
    layer = dict(merged.named_modules())[key]
    folded = [fold_lora(m)[f"{key}.base_layer.weight"] for m in members]
    assert torch.allclose(layer.base_layer.weight, 0.5 * (folded[0] + folded[1]), atol=1e-6)
    assert torch.count_nonzero(layer.lora_B["default"].weight) == 0  # folded: the adapter adds nothing
    proj = next(k for k in members[0].trainable_state_dict() if k.startswith("projectors."))
    a, b = (m.state_dict()[proj] for m in members)
    assert torch.allclose(merged.state_dict()[proj], 0.5 * (a + b), atol=1e-6)
