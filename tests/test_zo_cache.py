"""Zeroth-order steps compute what is frozen once per batch: the same result as
recomputing it for every query, with fewer forwards of the frozen part; batched
queries (the 2q perturbed copies in one vectorised forward) give the same update."""

import dataclasses

import pytest
import torch

from speechadapt.adapt.param_select import mark_trainable, select_parameters
from speechadapt.data.batch import SpeechBatch
from speechadapt.models.ctc import ZipformerCtc
from speechadapt.models.zipformer import get_preset
from speechadapt.training.loop import Trainer
from speechadapt.training.optim import OptimizerConfig
from speechadapt.training.options import TrainingConfig
from speechadapt.training.schedulers import SchedulerConfig

torch.set_num_threads(1)
ZO = OptimizerConfig(optimizer="zo-asr", zo_num_queries=2, base_lr=1e-3, zo_eps=1e-3, zo_seed=4)


class Ids:
    vocab_size = 30
    model_file = "ids"

    def encode(self, texts):
        return [[int(t) for t in s.split()] for s in texts]


def batches(n=3):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        texts = [" ".join(str(int(t)) for t in torch.randint(1, 30, (k,), generator=g)) for k in (5, 3)]
        out.append(SpeechBatch(torch.randn(2, 70, 80, generator=g), torch.tensor([70, 52]), texts, ["a", "b"], [.7, .5]))
    return out


def count_calls(module):
    calls = []
    module.register_forward_hook(lambda *a: calls.append(1))
    return calls


def run(tmp_path, model, cache, optimizer=ZO, **training):
    config = TrainingConfig(exp_dir=str(tmp_path), num_epochs=1, save_every_n=0, average_period=0, valid_interval=0,
                            tensorboard=False, cache_frozen=cache, **training)
    trainer = Trainer(config, model, batches(), None, optimizer_config=optimizer,
                      scheduler_config=SchedulerConfig(scheduler="constant"))
    trainer.fit()
    model.trainer = trainer
    return model


def zipformer_top_tuned():
    torch.manual_seed(0)
    model = ZipformerCtc(get_preset("tiny", regularize=False), 30, tokenizer=Ids())
    mark_trainable(model, select_parameters(model, "regex", r"^(encoder\.encoders\.[45]\.|ctc_output\.)"))
    return model


@pytest.mark.parametrize("top", [True, False], ids=["top-stacks", "head-only"])
def test_zipformer_frozen_stacks_run_once_per_batch_and_change_nothing(tmp_path, top):
    results = {}
    for cache in (True, False):
        model = zipformer_top_tuned()
        if not top:
            mark_trainable(model, select_parameters(model, "regex", r"^ctc_output\."))
        embed_calls, bottom_calls = count_calls(model.encoder_embed), count_calls(model.encoder.encoders[3])
        top_calls = count_calls(model.encoder.encoders[5])
        results[cache] = (run(tmp_path / str(cache), model, cache).state_dict(), len(embed_calls), len(bottom_calls),
                          len(top_calls))
    cached, plain = results[True], results[False]
    for key, value in plain[0].items():
        assert torch.equal(cached[0][key], value), key
    forwards = 3 * 4  # 3 steps x 2q evaluations
    assert plain[1:] == (forwards, forwards, forwards)
    assert cached[1] == cached[2] == 3  # once per batch
    assert cached[3] == (forwards if top else 3)  # tuned stacks run for every query
    assert not torch.equal(plain[0]["ctc_output.1.weight"], zipformer_top_tuned().state_dict()["ctc_output.1.weight"])


TEXTS = ["turn on the lights", "call alice", "play some music", "open the door"]


def tiny_llm_asr(llm_dir, selection=r"lora_"):
    from speechadapt.models.llm_asr import LlmAsrConfig, LlmAsrModel
    from speechadapt.models.llm_asr_build import load_llm_for_asr
    from speechadapt.models.zipformer import ZipformerEncoder

    torch.manual_seed(0)
    encoder = ZipformerEncoder(get_preset("tiny"))
    llm, tokenizer = load_llm_for_asr(llm_dir)
    model = LlmAsrModel([encoder], llm, tokenizer, LlmAsrConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0,
                                                                projector_dropout=0.0))
    mark_trainable(model, select_parameters(model, "regex", selection))
    return model


def run_llm_asr(exp_dir, model, cache, optimizer=ZO):
    data = [SpeechBatch(b.inputs, b.input_lens, TEXTS[:2], b.cut_ids, b.durations) for b in batches()]
    config = TrainingConfig(exp_dir=str(exp_dir), num_epochs=1, save_every_n=0, average_period=0,
                            valid_interval=0, tensorboard=False, cache_frozen=cache, save_trainable_only=True)
    trainer = Trainer(config, model, data, None, optimizer_config=optimizer,
                      scheduler_config=SchedulerConfig(scheduler="constant"))
    trainer.fit()
    return trainer


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    from speechadapt.models.hf.fixtures import make_tiny_qwen2

    return make_tiny_qwen2(tmp_path_factory.mktemp("qwen2"), TEXTS, tokenizer_vocab_size=300, hidden_size=64,
                           intermediate_size=128)


def test_llm_asr_lora_caches_encoder_and_projector(tmp_path, llm_dir):
    states, counts = {}, {}
    for cache in (True, False):
        model = tiny_llm_asr(llm_dir)
        enc_calls, proj_calls = count_calls(model.encoders[0]), count_calls(model.projectors[0])
        run_llm_asr(tmp_path / str(cache), model, cache)
        states[cache], counts[cache] = model.trainable_state_dict(), (len(enc_calls), len(proj_calls))
    for key, value in states[False].items():
        assert torch.equal(states[True][key], value), key
    assert counts[False] == (12, 12) and counts[True] == (3, 3)


def assert_same_update(sequential: dict, batched: dict, initial: dict) -> None:
    """Equal to float rounding (in-place perturb/restore vs stacked copies), and moved
    far beyond it."""
    moved = 0.0
    for key, value in sequential.items():
        torch.testing.assert_close(batched[key], value, rtol=1e-4, atol=1e-5)
        moved = max(moved, (value - initial[key]).abs().max().item())
    assert moved > 1e-4


@pytest.mark.parametrize("optimizer", ["zo-asr", "hizoo", "lozo"])
def test_batched_queries_give_the_sequential_update_zipformer_top_stacks(tmp_path, optimizer):
    config = dataclasses.replace(ZO, optimizer=optimizer, zo_num_queries=2)
    plain = run(tmp_path / "plain", zipformer_top_tuned(), True, config)
    model = zipformer_top_tuned()
    top_calls = count_calls(model.encoder.encoders[5])
    batched = run(tmp_path / "batched", model, True, dataclasses.replace(config, zo_batched_queries=True))
    assert_same_update(plain.state_dict(), batched.state_dict(), zipformer_top_tuned().state_dict())
    steps = 3
    assert batched.trainer.optimizer.num_forwards == steps * (2 * 2 + 1)
    assert len(top_calls) == steps * 2  # the plain L(theta), then one vectorised call for the 2q copies


def test_batched_queries_give_the_sequential_update_llm_asr_lora_and_projector(tmp_path, llm_dir):
    selection = r"lora_|^projectors\."
    config = dataclasses.replace(ZO, zo_num_queries=3)
    states = {}
    for batched in (False, True):
        model = tiny_llm_asr(llm_dir, selection)
        run_llm_asr(tmp_path / str(batched), model, True, dataclasses.replace(config, zo_batched_queries=batched))
        states[batched] = model.trainable_state_dict()
    assert_same_update(states[False], states[True], tiny_llm_asr(llm_dir, selection).trainable_state_dict())


def test_batched_queries_need_a_batched_loss_function():
    from speechadapt.adapt.zo import ZOOptimizer

    w = torch.nn.Parameter(torch.ones(3))
    opt = ZOOptimizer([w], lr=0.1, batched_queries=True)
    with pytest.raises(TypeError, match="loss_fn.batched"):
        opt.step(lambda: (w * w).sum())


def test_max_steps_stops_saves_and_resumes_as_a_no_op(tmp_path):
    model = zipformer_top_tuned()
    run(tmp_path, model, True, max_steps=2)
    saved = torch.load(tmp_path / "checkpoint-2.pt", weights_only=True)
    assert saved["batch_idx_train"] == 2 and not (tmp_path / "epoch-1.pt").exists()
    again = zipformer_top_tuned()
    run(tmp_path, again, True, max_steps=2, start_epoch="auto")
    assert not (tmp_path / "checkpoint-3.pt").exists()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
