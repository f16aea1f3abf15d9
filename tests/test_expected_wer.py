"""The expected-WER objective: continuous in the weights where the decoded WER is not,
for CTC and LLM-ASR models, and usable by the Trainer's zeroth-order step."""

import pytest
import torch

from speechadapt.adapt.objectives import ExpectedWer, word_errors
from speechadapt.adapt.zo import ZOOptimizer
from speechadapt.data.batch import SpeechBatch
from speechadapt.models.ctc import ZipformerCtc
from speechadapt.models.ctc_base import BpeTokenizer
from speechadapt.models.zipformer import get_preset
from speechadapt.training.loop import Trainer
from speechadapt.training.optim import OptimizerConfig
from speechadapt.training.options import TrainingConfig
from speechadapt.training.schedulers import SchedulerConfig

torch.set_num_threads(1)
TEXTS = ["turn on the lights", "call alice now", "play some music", "open the door",
         "set an alarm for seven", "what time is it", "call bob", "stop the music"]


@pytest.fixture(scope="module")
def ctc_model(tmp_path_factory):
    from speechadapt.data.bpe import prepare_lang_bpe

    lang = tmp_path_factory.mktemp("lang")
    prepare_lang_bpe(TEXTS, lang, 30)
    torch.manual_seed(0)
    tokenizer = BpeTokenizer.from_lang_dir(lang)
    return ZipformerCtc(get_preset("tiny", regularize=False), tokenizer.vocab_size, tokenizer=tokenizer).eval()


def fixed_batch(texts=TEXTS[:3]):
    g = torch.Generator().manual_seed(1)
    n = len(texts)
    return SpeechBatch(torch.randn(n, 80, 80, generator=g), torch.tensor([80] * n), list(texts),
                       [f"u{i}" for i in range(n)], [0.8] * n)


def hard_wer(model, batch):
    hyps = model.transcribe(batch)
    return sum(word_errors(r, h) for r, h in zip(batch.texts, hyps))


def test_word_errors():
    assert word_errors("call alice now", "call Alice") == 1 and word_errors("a b", "c d e") == 3


def test_expected_wer_moves_where_the_decoded_wer_does_not(ctc_model):
    batch = fixed_batch()
    objective = ExpectedWer(num_samples=8)
    zo = ZOOptimizer(ctc_model.parameters(), lr=0.0, eps=1e-3, seed=2)
    seed = zo.draw_seeds()[0]
    values = {}
    for sign, scale in (("+", 1e-3), ("-", -2e-3)):
        zo.perturb(seed, scale)
        with torch.inference_mode():
            values[sign] = (float(objective(ctc_model, batch)[0]), hard_wer(ctc_model, batch))
    zo.perturb(seed, 1e-3)
    assert values["+"][1] == values["-"][1]  # the decoded WER is flat at this eps
    assert values["+"][0] != values["-"][0]  # the expected WER is not
    # the same sample set for every evaluation of a batch; a new batch draws anew
    first = objective._hyps[0].clone()
    objective(ctc_model, batch)
    assert torch.equal(objective._hyps[0], first)
    objective(ctc_model, fixed_batch(TEXTS[3:6]))
    assert not torch.equal(objective._hyps[0], first)


def test_zeroth_order_training_on_the_expected_wer(ctc_model, tmp_path):
    model = ZipformerCtc(ctc_model.config, ctc_model.vocab_size, tokenizer=ctc_model.tokenizer)
    model.load_state_dict(ctc_model.state_dict())
    config = TrainingConfig(exp_dir=str(tmp_path), num_epochs=1, save_every_n=0, average_period=0,
                            valid_interval=0, tensorboard=False)
    trainer = Trainer(config, model, [fixed_batch(), fixed_batch(TEXTS[3:6])], None,
                      optimizer_config=OptimizerConfig(optimizer="mezo", base_lr=1e-4, zo_eps=1e-3),
                      scheduler_config=SchedulerConfig(scheduler="constant"), objective=ExpectedWer(4))
    trainer.fit()
    assert trainer.params["batch_idx_train"] == 2 and trainer.optimizer.skipped is None
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), ctc_model.parameters()))


def test_llm_asr_samples_and_scores_generations(tmp_path):
    from speechadapt.models.hf.fixtures import make_tiny_qwen2
    from speechadapt.models.llm_asr import LlmAsrConfig, LlmAsrModel
    from speechadapt.models.llm_asr_build import load_llm_for_asr
    from speechadapt.models.zipformer import ZipformerEncoder

    llm_dir = make_tiny_qwen2(tmp_path / "qwen2", TEXTS, tokenizer_vocab_size=300, hidden_size=64,
                              intermediate_size=128)
    torch.manual_seed(0)
    llm, tokenizer = load_llm_for_asr(llm_dir)
    model = LlmAsrModel([ZipformerEncoder(get_preset("tiny"))], llm, tokenizer,
                        LlmAsrConfig(lora_r=4, lora_alpha=8)).eval()
    batch = fixed_batch(TEXTS[:2])
    hyps, texts = model.sample_hypotheses(batch, 3, torch.Generator().manual_seed(0), max_new_tokens=6)
    assert len(texts) == 3 and all(len(row) == 2 for row in texts)
    again, _ = model.sample_hypotheses(batch, 3, torch.Generator().manual_seed(0), max_new_tokens=6)
    assert again[0] == hyps[0]  # seeded
    scores = model.hypothesis_log_probs(batch, hyps)
    assert scores.shape == (3, 2) and torch.isfinite(scores).all() and (scores < 0).all()
    loss, info = ExpectedWer(3)(model, batch)
    assert 0 <= float(loss) and info["frames"] == sum(len(t.split()) for t in TEXTS[:2])
