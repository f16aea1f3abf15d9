"""Tiny HF fixtures: save, reload offline through the adapters, forward pass and decode."""

import pytest
import torch

from speechadapt.decoding.ctc import greedy_ctc_collapse
from speechadapt.models.hf import (
    HFCtcAdapter,
    WhisperAdapter,
    load_hf_ctc,
    load_qwen2,
    load_whisper,
    load_whisper_adapter,
)
from speechadapt.models.hf.fixtures import (
    CTC_CHARS,
    count_parameters,
    make_tiny_ctc,
    make_tiny_qwen2,
    make_tiny_whisper,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_fixtures")
    return {
        "qwen2": make_tiny_qwen2(root / "qwen2"),
        "whisper": make_tiny_whisper(root / "whisper"),
        "wav2vec2": make_tiny_ctc(root / "wav2vec2", kind="wav2vec2"),
        "hubert": make_tiny_ctc(root / "hubert", kind="hubert"),
    }


def _audio(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        x[i, :n] = 0.1 * torch.randn(n, generator=g)
    return x, torch.tensor(lengths)


def test_qwen2_reload_forward_and_generate(dirs):
    model, tok = load_qwen2(dirs["qwen2"])
    assert model.config.model_type == "qwen2"
    assert not model.training
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert model.config.vocab_size > len(tok)  # spare rows, like the real checkpoint
    enc = tok(["turn on the kitchen lights"], return_tensors="pt")
    logits = model(**enc).logits
    assert logits.shape == (1, enc.input_ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
    out = model.generate(**enc, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert out.shape[1] == enc.input_ids.shape[1] + 4
    assert isinstance(tok.decode(out[0, enc.input_ids.shape[1]:]), str)


def test_qwen2_tokenizer_roundtrip_and_dtype(dirs):
    model, tok = load_qwen2(dirs["qwen2"], dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    for text in ["set an alarm for seven thirty", "Unseen words, digits 12 & ÜNICODE!"]:
        assert tok.decode(tok(text)["input_ids"]) == text
    # Trained merges: a frequent training word is one piece, not bytes.
    assert len(tok("kitchen", add_special_tokens=False)["input_ids"]) < len("kitchen")


def test_whisper_reload_and_processor(dirs):
    model, processor = load_whisper(dirs["whisper"])
    assert model.config.num_mel_bins == processor.feature_extractor.feature_size == 80
    assert model.generation_config.decoder_start_token_id == processor.tokenizer.convert_tokens_to_ids(
        "<|startoftranscript|>"
    )
    assert "<|en|>" in model.generation_config.lang_to_id


def test_whisper_adapter_labels(dirs):
    adapter = load_whisper_adapter(dirs["whisper"])
    tok = adapter.tokenizer
    prefix = tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"])
    assert adapter.prefix_ids == prefix
    inputs, labels = adapter.label_ids(["call alice", "turn on the kitchen lights"])
    assert inputs[:, :4].tolist() == [prefix, prefix]
    assert (labels[:, :3] == -100).all()  # language/task/notimestamps are forced, not scored
    text_ids = tok("call alice", add_special_tokens=False)["input_ids"]
    assert labels[0, 3:3 + len(text_ids) + 1].tolist() == text_ids + [adapter.eot_id]
    assert (labels[0, 3 + len(text_ids) + 1:] == -100).all()
    _, with_prefix = adapter.label_ids(["call alice"], include_prefix_in_loss=True)
    assert with_prefix[0, :3].tolist() == prefix[1:]


def test_whisper_adapter_loss_and_generate(dirs):
    adapter = load_whisper_adapter(dirs["whisper"])
    assert isinstance(adapter, WhisperAdapter)
    audio, lens = _audio([16000, 8000])
    texts = ["turn on the kitchen lights", "call alice"]
    loss_sum, num_tokens = adapter.loss(audio, texts, lens)
    expected_tokens = sum(len(adapter.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)
    assert num_tokens == expected_tokens
    assert torch.isfinite(loss_sum) and loss_sum.item() > 0
    loss_sum.backward()
    assert adapter.model.model.encoder.conv1.weight.grad.abs().sum() > 0
    # Features in, or a list of waveforms in: the same loss as padded audio + lengths.
    features = adapter.compute_features(audio, lens)
    assert features.shape == (2, 80, 3000)
    with torch.no_grad():
        again, _ = adapter.loss(features, texts)
        listed, _ = adapter.loss([audio[0], audio[1, :8000]], texts)
    assert torch.allclose(again, loss_sum.detach(), rtol=1e-4) and torch.allclose(listed, again, rtol=1e-4)
    hyps = adapter.generate(audio, lens, max_new_tokens=5)
    beams = adapter.generate(features, max_new_tokens=5, num_beams=2)
    assert len(hyps) == len(beams) == 2 and all(isinstance(h, str) for h in hyps + beams)


def test_whisper_decode_drops_ids_beyond_tokenizer(dirs):
    adapter = load_whisper_adapter(dirs["whisper"])
    ids = adapter.tokenizer("call alice", add_special_tokens=False)["input_ids"]
    wide = torch.tensor([ids[:1] + [len(adapter.tokenizer) + 5] + ids[1:]])
    assert adapter.decode(wide) == ["call alice"]
    with_specials = torch.tensor([adapter.prefix_ids + ids + [adapter.eot_id]])
    assert adapter.decode(with_specials) == ["call alice"]


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_ctc_adapter_protocol(dirs, kind):
    adapter = load_hf_ctc(dirs[kind])
    assert isinstance(adapter, HFCtcAdapter) and adapter.model.config.model_type == kind
    assert adapter.blank_id == 0 and adapter.vocab_size == len(CTC_CHARS)
    assert adapter.use_attention_mask == (kind == "hubert")
    audio, lens = _audio([16000, 9600])
    logits, out_lens = adapter.ctc_logits(audio, lens)
    assert logits.shape[:2] == (2, int(out_lens.max())) and logits.shape[2] == adapter.vocab_size
    # Total stride 320: 20 ms frames.
    assert out_lens.tolist() == [49, 29]
    log_probs, lens2 = adapter(audio, lens)
    assert torch.equal(lens2, out_lens)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(2, logits.shape[1]), atol=1e-5)
    hyps = adapter.greedy_decode(audio, lens)
    assert hyps == greedy_ctc_collapse(logits, out_lens, 0)
    assert all(0 not in h for h in hyps)
    assert [adapter.decode_ids(h) for h in hyps] == [adapter.decode_text(h) for h in hyps]


def test_ctc_greedy_collapse_rules():
    argmax = torch.tensor([[5, 5, 0, 5, 7, 7, 0, 0, 9], [3, 0, 3, 3, 4, 4, 4, 4, 4]])
    one_hot = torch.nn.functional.one_hot(argmax, 10).float()
    assert greedy_ctc_collapse(one_hot, torch.tensor([9, 4]), blank_id=0) == [[5, 5, 7, 9], [3, 3]]


def test_ctc_text_roundtrip(dirs):
    adapter = load_hf_ctc(dirs["wav2vec2"])
    ids = adapter.encode_text("hello  world it's")
    assert adapter.decode_text(ids) == "HELLO WORLD IT'S"
    assert adapter.decode_text([adapter.blank_id] + ids) == "HELLO WORLD IT'S"


def test_ctc_batch_matches_single_with_attention_mask(dirs):
    adapter = load_hf_ctc(dirs["hubert"])
    audio, lens = _audio([16000, 6400], seed=3)
    with torch.no_grad():
        batch_logits, out_lens = adapter.ctc_logits(audio, lens)
        alone, alone_lens = adapter.ctc_logits(audio[1:, :6400], lens[1:])
    n = int(alone_lens[0])
    assert n == int(out_lens[1])
    assert torch.allclose(batch_logits[1, :n], alone[0], atol=1e-4)


def test_ctc_normalise_uses_valid_samples_only(dirs):
    adapter = load_hf_ctc(dirs["wav2vec2"])
    audio, lens = _audio([800, 500])
    audio = audio * 3 + 2 * (audio != 0)
    audio[1, 500:] = 7.0  # garbage in the padding must not leak into the statistics
    out = adapter.normalise_audio(audio, lens)
    assert torch.allclose(out[1, :500].mean(), torch.tensor(0.0), atol=1e-5)
    assert torch.allclose(out[1, :500].std(unbiased=False), torch.tensor(1.0), atol=1e-3)
    assert (out[1, 500:] == 0).all()


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_ctc_tta_parameter_selection(dirs, kind):
    adapter = load_hf_ctc(dirs[kind])
    chosen = dict(adapter.norm_and_extractor_parameters())
    names = dict(adapter.named_parameters())
    assert set(chosen) <= set(names)
    norms = {f"{m}.{p}" for m, mod in adapter.named_modules() if isinstance(mod, (torch.nn.LayerNorm, torch.nn.GroupNorm))
             for p, _ in mod.named_parameters(recurse=False)}
    assert norms and norms <= set(chosen)
    assert any(".feature_extractor.conv_layers.0.conv." in n for n in chosen)
    assert any(".feature_projection.projection." in n for n in chosen)
    assert not any("attention.q_proj" in n or "lm_head" in n for n in chosen)
    assert set(dict(adapter.norm_and_extractor_parameters(include_extractor=False))) == norms


def test_fixture_sizes(dirs):
    model, _ = load_qwen2(dirs["qwen2"])
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (2, 256)
    assert 1e6 < count_parameters(model) < 2e6
    assert count_parameters(load_hf_ctc(dirs["hubert"]).model) < 2e5


def test_whisper_tiny_shapes(tmp_path):
    adapter = load_whisper_adapter(make_tiny_whisper(tmp_path / "wt", preset="whisper-tiny-shapes"))
    cfg = adapter.model.config
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.vocab_size) == (384, 4, 4, 51865)
    assert 37e6 < count_parameters(adapter.model) < 39e6
    audio, lens = _audio([16000])
    assert len(adapter.generate(audio, lens, max_new_tokens=3)) == 1


@pytest.mark.gpu
def test_adapters_on_gpu_in_bf16(dirs):
    audio, lens = _audio([16000, 8000])
    ctc = load_hf_ctc(dirs["hubert"], device="cuda", dtype="bf16")
    assert ctc.dtype == torch.bfloat16 and ctc.device.type == "cuda"
    logits, out_lens = ctc.ctc_logits(audio, lens)
    assert logits.is_cuda and out_lens.tolist() == [49, 24]
    whisper = load_whisper_adapter(dirs["whisper"], device="cuda", dtype="bf16")
    loss_sum, _ = whisper.loss(audio, ["call alice", "turn on"], lens)
    assert torch.isfinite(loss_sum)
    assert len(whisper.generate(audio, lens, max_new_tokens=3)) == 2
    model, tok = load_qwen2(dirs["qwen2"], device="cuda", dtype=torch.bfloat16)
    assert model.lm_head.weight.is_cuda and model.dtype == torch.bfloat16
