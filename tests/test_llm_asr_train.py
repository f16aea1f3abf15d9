"""LLM-ASR through the shared training loop: frozen encoder, adapter-only checkpoints,
MoSE under DDP, and the text pre-training stage (on the same loop)."""

import json

import pytest
import torch

from speechadapt.bin import pretrain_text_lm
from speechadapt.data.batch import SpeechBatch
from speechadapt.models.hf.fixtures import make_tiny_qwen2
from speechadapt.models.llm_asr import LlmAsrConfig, LlmAsrModel
from speechadapt.models.llm_asr_build import load_frozen_encoder, load_llm_for_asr
from speechadapt.models.zipformer import ZipformerEncoder, get_preset
from speechadapt.training.loop import Trainer
from speechadapt.training.optim import OptimizerConfig
from speechadapt.training.options import TrainingConfig
from speechadapt.training.schedulers import SchedulerConfig
from speechadapt.utils.safe_load import safe_torch_load

TEXTS = ["turn on the lights", "call alice", "play some music now", "open the door", "set an alarm"]


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return make_tiny_qwen2(tmp_path_factory.mktemp("qwen2"), TEXTS, tokenizer_vocab_size=300,
                           hidden_size=64, intermediate_size=128)


def make_batches(num: int, seed: int, size: int = 2):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(num):
        lens = torch.tensor([90, 70 - 5 * (i % 3)])[:size]
        texts = [TEXTS[i % 5], TEXTS[(i + 2) % 5]][:size]
        batches.append(SpeechBatch(torch.randn(2, 90, 80, generator=g)[:size], lens, texts,
                                   [f"u{i}-{j}" for j in range(size)], [0.9, 0.7][:size]))
    return batches


def adamw(lr, scheduler="constant", **changes):
    return dict(optimizer_config=OptimizerConfig(optimizer="adamw", base_lr=lr),
                scheduler_config=SchedulerConfig(scheduler=scheduler, **changes))


def test_encoder_frozen_and_in_eval_after_epoch_with_validation(llm_dir, tmp_path):
    torch.manual_seed(0)
    encoder = ZipformerEncoder(get_preset("tiny")).eval()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    llm, tokenizer = load_llm_for_asr(llm_dir)
    model = LlmAsrModel([encoder], llm, tokenizer, LlmAsrConfig(lora_r=4, lora_alpha=8))
    base_before = {n: p.detach().clone() for n, p in model.llm.named_parameters() if "lora_" not in n}
    seen = []  # (encoder.training, grad enabled) at every encoder call
    encoder.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled())))
    config = TrainingConfig(exp_dir=str(tmp_path), num_epochs=2, valid_interval=2, average_period=1, save_every_n=0,
                            tensorboard=False, log_interval=1, save_trainable_only=True)
    trainer = Trainer(config, model, make_batches(4, 0), make_batches(2, 1), **adamw(5e-3))
    params = trainer.fit()
    assert params["batch_idx_train"] == 8 and params["valid_loss"] < float("inf")
    assert len(seen) == 8 + 2 * 2 * 2 + 2 * 2  # training + mid-epoch validations + epoch-end ones
    assert all(training is False and grad is False for training, grad in seen)
    assert not encoder.training and model.training
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert all(not p.requires_grad for p in encoder.parameters())
    base_after = dict(model.llm.named_parameters())
    assert all(torch.equal(base_after[n], v) for n, v in base_before.items())
    # Adapter-only checkpoint: no encoder or base LLM weights, and it reloads.
    saved = safe_torch_load(tmp_path / "epoch-2.pt")
    keys = set(saved["model"])
    assert keys == set(model.trainable_state_dict())
    assert not any(k.startswith("encoders.") or "base_layer" in k for k in keys)
    assert saved["params"]["trainable_only"] is True
    fresh = LlmAsrModel([ZipformerEncoder(get_preset("tiny"))], load_llm_for_asr(llm_dir)[0], tokenizer,
                        LlmAsrConfig(lora_r=4, lora_alpha=8))
    fresh.load_trainable_state_dict(saved["model"])
    assert torch.equal(fresh.projectors[0].linear1.weight, model.projectors[0].linear1.weight)


def _train(llm_dir, exp_dir, num_epochs, start_epoch=1):
    torch.manual_seed(0)
    encoder = ZipformerEncoder(get_preset("tiny"))  # frozen: the same file in every run
    torch.manual_seed(start_epoch)  # the adapter of a resumed run must come from the checkpoint
    llm, tokenizer = load_llm_for_asr(llm_dir)
    model = LlmAsrModel([encoder], llm, tokenizer, LlmAsrConfig(lora_r=4, lora_alpha=8))
    config = TrainingConfig(exp_dir=str(exp_dir), num_epochs=num_epochs, start_epoch=start_epoch,
                            valid_interval=0, average_period=2, save_every_n=0, tensorboard=False,
                            save_trainable_only=True)
    Trainer(config, model, make_batches(3, 0), make_batches(1, 1), **adamw(5e-3, "eden", warmup_batches=2)).fit()
    return model.trainable_state_dict()


def test_resume_from_adapter_only_checkpoint_is_exact(llm_dir, tmp_path):
    straight = _train(llm_dir, tmp_path / "a", num_epochs=2)
    torch.manual_seed(0)
    _train(llm_dir, tmp_path / "b", num_epochs=1)
    resumed = _train(llm_dir, tmp_path / "b", num_epochs=2, start_epoch=2)
    assert set(straight) == set(resumed)
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
    saved = safe_torch_load(tmp_path / "b" / "epoch-2.pt")
    assert set(saved["model_avg"]) == set(straight)  # the running average covers the adapter only


def test_encoder_checkpoint_loads_strictly(tmp_path):
    from speechadapt.models.ctc import ZipformerCtc

    ctc = ZipformerCtc(get_preset("tiny"), vocab_size=50)
    torch.save({"model": ctc.state_dict()}, tmp_path / "epoch-3-avg-2.pt")
    encoder = load_frozen_encoder(tmp_path / "epoch-3-avg-2.pt", "tiny")
    assert not encoder.training and all(not p.requires_grad for p in encoder.parameters())
    own = encoder.state_dict()
    assert all(torch.equal(own[k], v) for k, v in ctc.state_dict().items() if not k.startswith("ctc_output"))
    torch.save({"model": {"foo.weight": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(KeyError, match="no Zipformer encoder weights"):
        load_frozen_encoder(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="--encoder-preset"):
        load_frozen_encoder(tmp_path / "epoch-3-avg-2.pt", "small")


def test_text_pretraining_beats_unigram(tmp_path):
    from speechadapt.data.grammar import unique_sentences

    sentences = unique_sentences(260, seed=3)
    (tmp_path / "train.txt").write_text("\n".join(sentences[:220]) + "\n")
    (tmp_path / "valid.txt").write_text("\n".join(s.upper() for s in sentences[220:]) + "\n")
    out = tmp_path / "lm"
    report = pretrain_text_lm.main_report([
        "--train-text", str(tmp_path / "train.txt"), "--valid-text", str(tmp_path / "valid.txt"),
        "--out-dir", str(out), "--num-epochs", "3", "--hidden-size", "64", "--intermediate-size", "128",
        "--tokenizer-vocab-size", "300", "--batch-size", "16", "--base-lr", "5e-3", "--copy-examples", "false",
        "--exp-dir", str(tmp_path / "lm-exp"), "--tensorboard", "false"])
    assert report["valid_perplexity"] < report["unigram_perplexity"] < report["valid_perplexity_before_training"]
    assert json.loads((out / "pretrain_report.json").read_text()) == report
    # trained through the project's loop: its checkpoints, in icefall's layout
    saved = safe_torch_load(tmp_path / "lm-exp" / "epoch-3.pt")
    assert saved["params"]["batch_idx_train"] == 3 * 14 and "lm.model.embed_tokens.weight" in saved["model"]
    llm, tokenizer = load_llm_for_asr(out)  # usable as --llm-dir
    assert tokenizer.convert_tokens_to_ids("<speech>") is not None
    # An untrained LM does not beat the baseline: the stage fails and leaves no model behind.
    with pytest.raises(pretrain_text_lm.PerplexityError):
        pretrain_text_lm.main_report([
            "--train-text", str(tmp_path / "train.txt"), "--valid-text", str(tmp_path / "valid.txt"),
            "--out-dir", str(tmp_path / "lm0"), "--num-epochs", "0", "--hidden-size", "32",
            "--intermediate-size", "64", "--tokenizer-vocab-size", "300", "--exp-dir", str(tmp_path / "lm0-exp")])
    assert not (tmp_path / "lm0").exists() and not (tmp_path / "lm0.partial").exists()


def test_text_pretraining_learns_to_copy_from_the_speech_slot_and_checks_it(tmp_path):
    from speechadapt.data.grammar import unique_sentences

    sentences = unique_sentences(260, seed=3)
    (tmp_path / "train.txt").write_text("\n".join(sentences[:220]) + "\n")
    (tmp_path / "valid.txt").write_text("\n".join(sentences[220:]) + "\n")
    flags = ["--train-text", str(tmp_path / "train.txt"), "--valid-text", str(tmp_path / "valid.txt"),
             "--num-epochs", "4", "--hidden-size", "64", "--intermediate-size", "128", "--tokenizer-vocab-size",
             "300", "--batch-size", "16", "--base-lr", "5e-3", "--tensorboard", "false"]
    out = tmp_path / "lm"
    report = pretrain_text_lm.main_report(flags + ["--out-dir", str(out), "--exp-dir", str(tmp_path / "a"),
                                                   "--min-copy-accuracy", "0.1"])
    assert report["copy_examples"] and report["copy_accuracy"] > report["copy_accuracy_before_training"] + 0.1
    saved = safe_torch_load(tmp_path / "a" / "epoch-4.pt")
    assert saved["params"]["batch_idx_train"] == 4 * 28  # every sentence twice: plain and copy
    # The speech tokens were added (and trained) before pre-training: LLM-ASR finds them in place.
    rows = saved["model"]["lm.model.embed_tokens.weight"].shape[0]
    llm, tokenizer = load_llm_for_asr(out)
    assert llm.get_input_embeddings().weight.shape[0] == rows
    embed = llm.get_input_embeddings().weight
    start = tokenizer.convert_tokens_to_ids("<start_speech>")
    assert torch.equal(embed[start], saved["model"]["lm.model.embed_tokens.weight"][start])
    # Below the threshold the stage fails, naming it, and leaves no model behind.
    with pytest.raises(pretrain_text_lm.CopyAccuracyError, match="--min-copy-accuracy 0.99"):
        pretrain_text_lm.main_report(flags + ["--out-dir", str(tmp_path / "weak"), "--exp-dir", str(tmp_path / "b"),
                                              "--num-epochs", "1", "--min-copy-accuracy", "0.99"])
    assert not (tmp_path / "weak").exists()


def test_scrambled_copy_texts_keep_lengths_and_vocabulary_and_replace_the_share_asked():
    texts = ["call anna at noon", "play jazz", "set an alarm for six", "text liam hello"] * 5
    words = {w for t in texts for w in t.split()}
    out = pretrain_text_lm.scrambled_texts(texts, 0.5, seed=1)
    assert out == pretrain_text_lm.scrambled_texts(texts, 0.5, seed=1)  # seeded
    assert [len(t.split()) for t in out] == [len(t.split()) for t in texts]
    assert {w for t in out for w in t.split()} <= words
    assert 7 <= sum(a != b for a, b in zip(out, texts)) <= 10  # 10 drawn; a draw may repeat its sentence
    assert pretrain_text_lm.scrambled_texts(texts, 0.0, seed=1) == texts
    with pytest.raises(ValueError, match="scrambled-copy-fraction"):
        pretrain_text_lm.scrambled_texts(texts, 1.5, seed=1)


def _mose_ddp_worker(rank, world_size, llm_dir, out_dir):
    import speechadapt.models.llm_asr as llm_asr
    from speechadapt.training.dist import cleanup_dist, setup_dist

    torch.set_num_threads(1)
    dist_info = setup_dist(rank, world_size)
    # Worst case for DDP: on rank 0 the second encoder's slot is dropped from every
    # utterance, so its projector takes no part in rank 0's loss.
    fixed = torch.tensor([[True, False]]) if rank == 0 else torch.tensor([[True, True]])
    llm_asr.sample_slot_mask = lambda batch, slots, p, generator=None: fixed.expand(batch, slots).clone()
    torch.manual_seed(0)
    narrow = get_preset("tiny", encoder_dim=(32, 48, 64, 64, 64, 48))  # MoSE encoders that differ in size
    encoders = [ZipformerEncoder(get_preset("tiny")), ZipformerEncoder(narrow)]
    llm, tokenizer = load_llm_for_asr(llm_dir)
    model = LlmAsrModel(encoders, llm, tokenizer, LlmAsrConfig(lora_r=4, lora_alpha=8, mose_slot_dropout=0.5))
    initial = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    config = TrainingConfig(exp_dir=str(out_dir), num_epochs=1, valid_interval=0, average_period=1, save_every_n=0,
                            tensorboard=False, log_interval=1, save_trainable_only=True)
    Trainer(config, model, make_batches(6, rank, size=1), None, dist_info, **adamw(5e-3)).fit()
    torch.save({"initial": initial, "final": model.trainable_state_dict()}, out_dir / f"rank{rank}.pt")
    cleanup_dist()


@pytest.mark.slow
def test_mose_slot_dropout_trains_under_ddp(llm_dir, tmp_path, monkeypatch):
    from speechadapt.training.dist import launch

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "0")
    launch(_mose_ddp_worker, 2, llm_dir, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, value in ranks[0]["final"].items():
        assert torch.equal(value, ranks[1]["final"][key]), key  # gradients were all-reduced
    moved = [k for k, v in ranks[0]["final"].items() if not torch.equal(v, ranks[0]["initial"][k])]
    assert any(k.startswith("projectors.1.") for k in moved) and any(k.startswith("projectors.0.") for k in moved)


def test_read_texts_from_text_file_and_cut_manifest(tmp_path):
    from lhotse import CutSet, SupervisionSegment
    from lhotse.testing.dummies import dummy_cut

    cuts = []
    for i, text in enumerate(["Call  ALICE", "play music"]):
        cut = dummy_cut(i, duration=1.0)
        cut.supervisions = [SupervisionSegment(f"s{i}", cut.recording_id, 0.0, 1.0, text=text)]
        cuts.append(cut)
    CutSet.from_cuts(cuts).to_file(tmp_path / "synth_cuts_train.jsonl.gz")
    assert pretrain_text_lm.read_texts(tmp_path / "synth_cuts_train.jsonl.gz") == ["call alice", "play music"]
    (tmp_path / "t.txt").write_text("Open The Door\n\n  set an alarm \n")
    assert pretrain_text_lm.read_texts(tmp_path / "t.txt") == ["open the door", "set an alarm"]
    with pytest.raises(FileNotFoundError):
        pretrain_text_lm.read_texts(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="no text"):
        pretrain_text_lm.read_texts(tmp_path / "empty.txt")


def _first_train_batches(kind, root, num=3):
    from speechadapt.bin import train
    from speechadapt.data.datamodule import AsrDataModule, DataConfig
    from speechadapt.utils.flags import dataclass_from_args, parse_args

    from mini_corpus import data_flags  # noqa: E402 (tests/ is on sys.path)

    required = {"llm_asr": ["--llm-dir", "unused", "--encoder-ckpt", "unused"],
                "zipformer_ctc": ["--lang-dir", "unused"]}[kind]
    args = parse_args(train.get_parser, ["--model", kind, "--train-split", "train", "--exp-dir", str(root / "x"),
                                         *required, *data_flags(root)], entry_point="train")
    data = AsrDataModule(dataclass_from_args(DataConfig, args), "fbank", seed=1)
    cuts = data.load_cuts("train")
    stored = {c.id: torch.from_numpy(c.load_features()) for c in cuts}
    batches = []
    for batch, _ in zip(data.train_dataloaders(cuts), range(num)):
        batches.append([(batch.inputs[i, : int(batch.input_lens[i])], stored[cut_id])
                        for i, cut_id in enumerate(batch.cut_ids)])
    return batches


def test_llm_asr_training_batches_reach_the_frozen_encoder_unaugmented_by_default(trained_mini_ctc):
    llm = _first_train_batches("llm_asr", trained_mini_ctc)
    assert all(torch.equal(seen, stored) for batch in llm for seen, stored in batch)
    # The same loader with the CTC kind's defaults masks them (so the check above can fail).
    ctc = _first_train_batches("zipformer_ctc", trained_mini_ctc)
    assert any(not torch.equal(seen, stored) for batch in ctc for seen, stored in batch)
