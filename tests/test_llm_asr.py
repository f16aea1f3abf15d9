"""LLM-ASR model: prompt, labels, frozen encoder, LoRA, special rows, decoding, MoSE."""

import pytest
import torch

from speechadapt.models.hf.fixtures import make_tiny_qwen2
from speechadapt.models.llm_asr import LlmAsrConfig, LlmAsrModel, sample_slot_mask
from speechadapt.models.llm_asr_build import load_llm_for_asr
from speechadapt.models.llm_asr_prompt import IGNORE_ID, PromptBuilder, prompt_text
from speechadapt.models.zipformer import ZipformerEncoder, get_preset

TEXTS = ["Turn on the kitchen lights", "call alice at nine", "play some music"]
LORA_SMALL = dict(lora_r=4, lora_alpha=8)


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return make_tiny_qwen2(tmp_path_factory.mktemp("qwen2"), None, tokenizer_vocab_size=300,
                           hidden_size=64, intermediate_size=128)


def tiny_encoder(seed: int = 0) -> ZipformerEncoder:
    torch.manual_seed(seed)
    return ZipformerEncoder(get_preset("tiny", pad_invariant=True)).eval()


def make_model(llm_dir, num_encoders: int = 1, **config) -> LlmAsrModel:
    llm, tokenizer = load_llm_for_asr(llm_dir)
    encoders = [tiny_encoder(seed) for seed in range(num_encoders)]
    return LlmAsrModel(encoders, llm, tokenizer, LlmAsrConfig(**{**LORA_SMALL, **config}))


def features(lens, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lens)
    return torch.randn(len(lens), int(lens.max()), 80, generator=g), lens


def test_frame_stacking_and_projector_shape():
    from speechadapt.models.projector import FrameStackProjector, stack_frames
    from speechadapt.models.zipformer.scaling import SwooshR

    x = torch.arange(2 * 10 * 3, dtype=torch.float32).reshape(2, 10, 3)
    stacked, lens = stack_frames(x, torch.tensor([10, 7]), k=4)
    assert stacked.shape == (2, 2, 12) and lens.tolist() == [2, 1]  # T mod k frames dropped
    assert torch.equal(stacked[1, 1], x[1, 4:8].reshape(-1))  # frames 4..7 side by side
    proj = FrameStackProjector(in_dim=3, k=4, hidden=16, dropout=0.1)
    kinds = [type(m) for m in (proj.dropout, proj.linear1, proj.activation, proj.linear2)]
    assert kinds == [torch.nn.Dropout, torch.nn.Linear, SwooshR, torch.nn.Linear]
    assert proj.linear1.weight.shape == (16, 12) and proj.linear2.weight.shape == (16, 16)
    y, y_lens = proj.eval()(x, torch.tensor([10, 7]))
    assert y.shape == (2, 2, 16) and y_lens.tolist() == [2, 1]
    with pytest.raises(ValueError, match="feature dim"):
        proj(torch.zeros(1, 8, 5), torch.tensor([8]))


def test_prompt_is_the_literal_chat_template(llm_dir):
    _, tokenizer = load_llm_for_asr(llm_dir)
    text = "Set An Alarm"
    messages = [{"role": "user", "content": "<start_speech><speech><end_speech>"},
                {"role": "assistant", "content": text.lower()}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == prompt_text(1, text)
    for slots in (1, 2):
        builder = PromptBuilder(tokenizer, num_slots=slots)
        ids = [int(i) for seg in builder.layout([True] * slots, builder.target_ids(text))
               for i in (seg.ids.tolist() if seg.ids is not None else [builder.speech_id])]
        assert ids == tokenizer(prompt_text(slots, text), add_special_tokens=False)["input_ids"]


def test_labels_cover_only_transcript_and_im_end(llm_dir):
    model = make_model(llm_dir)
    x, lens = features([100, 60, 80])
    speech = model.encode(x, lens)
    prompts = model.build_prompts(speech, TEXTS)
    frames = speech[0][1]
    fixed = len(model.prompt.head_ids) + 2 + len(model.prompt.tail_ids)  # + <start>/<end>
    for i, text in enumerate(TEXTS):
        target = model.prompt.target_ids(text)
        length = fixed + int(frames[i]) + len(target)
        pad = prompts.labels.size(1) - length
        assert prompts.attention_mask[i].tolist() == [0] * pad + [1] * length
        assert prompts.labels[i, -len(target):].tolist() == target
        assert (prompts.labels[i, : -len(target)] == IGNORE_ID).all()  # prompt + padding
        assert target[-1] == model.prompt.im_end_id
        assert prompts.position_ids[i, pad:].tolist() == list(range(length))
        assert (prompts.inputs_embeds[i, :pad] == 0).all()


def test_special_token_rows_get_gradient_only_when_trainable(llm_dir):
    model = make_model(llm_dir, train_special_tokens=True)
    x, lens = features([80, 60])
    model.train()
    model(x, lens, TEXTS[:2]).loss.backward()
    grad = model.speech_token_embeddings.grad
    assert grad is not None and (grad.abs().sum(dim=1) > 0).all()  # both rows
    assert not model.llm.get_input_embeddings().weight.requires_grad  # no full-embedding copy
    frozen = make_model(llm_dir, train_special_tokens=False)
    assert "speech_token_embeddings" not in dict(frozen.named_parameters())
    assert "speech_token_embeddings" in frozen.trainable_state_dict()  # still saved (a buffer)


def test_lora_only_training_leaves_base_weights_untouched(llm_dir):
    model = make_model(llm_dir)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    assert lora and all("lora_" in n or n.startswith(("projectors.", "speech_token")) for n, p in
                        model.named_parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, lens = features([80, 60, 70])
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        model(x, lens, TEXTS).loss.backward()
        optimizer.step()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in base.items())
    assert any(not torch.equal(params[n], v) for n, v in lora.items())


def test_trainable_state_dict_round_trip(llm_dir):
    model = make_model(llm_dir)
    state = model.trainable_state_dict()
    assert not any(k.startswith("encoders.") for k in state)
    assert not any("base_layer" in k or k.endswith("embed_tokens.weight") for k in state)
    changed = {k: v + 1.0 if v.is_floating_point() else v for k, v in state.items()}
    other = make_model(llm_dir)
    other.load_trainable_state_dict(changed)
    assert all(torch.equal(other.trainable_state_dict()[k], v) for k, v in changed.items())
    with pytest.raises(KeyError, match="missing"):
        other.load_trainable_state_dict({k: v for k, v in list(changed.items())[1:]})


def _make_speech_matter(model: LlmAsrModel) -> None:
    # Fresh LoRA (B = 0) and a random tiny LM ignore the speech; perturb so they do not.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or name.startswith("projectors."):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def test_batched_left_padded_decoding_equals_one_by_one(llm_dir):
    model = make_model(llm_dir)
    _make_speech_matter(model)
    model.eval()
    x, lens = features([120, 61, 90, 75], seed=3)
    batched = model.decode(x, lens, max_new_tokens=6, return_ids=True)
    single = [model.decode(x[i : i + 1, : int(lens[i])], lens[i : i + 1], max_new_tokens=6, return_ids=True)[0]
              for i in range(len(lens))]
    assert batched == single
    assert len({tuple(s) for s in single}) > 1  # the utterances really differ
    texts = model.decode(x, lens, max_new_tokens=6)
    assert all(t == t.strip().lower() for t in texts)
    beams = model.decode(x, lens, max_new_tokens=6, num_beams=3, return_ids=True)
    assert len(beams) == len(lens)


def test_greedy_decoding_equals_teacher_forced_argmax(llm_dir):
    # The training path (explicit positions, logits_to_keep, label shift) and generate
    # (its own positions, KV cache) must see the same sequence: teacher-forcing the
    # greedy output through forward(), the argmax hits every label token.
    model = make_model(llm_dir)
    _make_speech_matter(model)
    model.eval()
    # A chat checkpoint's sampling settings must not leak into ASR decoding.
    model.llm.generation_config.repetition_penalty = 50.0
    model.llm.generation_config.no_repeat_ngram_size = 1
    x, lens = features([120, 61, 90], seed=4)
    max_new = 8
    greedy = model.decode(x, lens, max_new_tokens=max_new, return_ids=True)
    targets = [g + [model.prompt.im_end_id] if len(g) < max_new else g for g in greedy]
    with torch.no_grad():
        out = model(x, lens, targets)
    assert out.num_tokens == sum(len(t) for t in targets)
    assert out.num_correct == out.num_tokens
    assert sum(len(g) for g in greedy) >= 6  # enough generated tokens to mean something


def test_slot_mask_rule():
    g = torch.Generator().manual_seed(0)
    keep = sample_slot_mask(4000, 3, 0.5, g)
    assert keep.any(dim=1).all()  # never an utterance without speech
    # Each slot dropped with p = 0.5; the 1/8 of rows with all three dropped keep all:
    # expected dropped fraction (1.5 - 3/8) / 3 = 0.375.
    assert abs((1 - keep.float().mean().item()) - 0.375) < 0.03
    assert sample_slot_mask(100, 2, 0.0, g).all()
    assert sample_slot_mask(200, 1, 0.9, g).all()  # a single slot is never dropped
    with pytest.raises(ValueError):
        sample_slot_mask(2, 2, 1.0, g)


def _count_rows(embeds: torch.Tensor, row: torch.Tensor) -> int:
    return int((embeds == row).all(dim=-1).sum())


def test_mose_one_slot_per_encoder_and_dropped_slots(llm_dir):
    model = make_model(llm_dir, num_encoders=2, mose_slot_dropout=0.5)
    assert len(model.projectors) == 2 and model.prompt.num_slots == 2
    x, lens = features([80, 64, 72])
    start_row = model.embed_ids(torch.tensor([model.prompt.start_id]))[0]
    model.eval()
    speech = model.encode(x, lens)
    full = model.build_prompts(speech)  # decoding: every slot
    assert all(_count_rows(full.inputs_embeds[i], start_row) == 2 for i in range(3))
    keep = torch.tensor([[True, False], [False, True], [True, True]])
    partial = model.build_prompts(speech, TEXTS, keep)
    for i in range(3):
        assert _count_rows(partial.inputs_embeds[i], start_row) == int(keep[i].sum())
        speech_frames = sum(int(speech[s][1][i]) for s in range(2) if keep[i, s])
        assert int(partial.attention_mask[i].sum()) == (
            len(model.prompt.head_ids) + 2 * int(keep[i].sum()) + speech_frames
            + len(model.prompt.tail_ids) + len(model.prompt.target_ids(TEXTS[i])))
    # A slot dropped from the whole batch still reaches autograd (zero gradient), so
    # DDP never waits for its projector.
    model.train()
    out = model(x, lens, TEXTS, keep=torch.tensor([[True, False]] * 3))
    out.loss.backward()
    grads = [p.grad for p in model.projectors[1].parameters()]
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads)
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in model.projectors[0].parameters())


def test_projector_output_starts_at_the_token_embedding_scale(llm_dir):
    from speechadapt.models.llm_asr import token_embedding_rms

    x, lens = features([90, 70])
    token_norm = load_llm_for_asr(llm_dir)[0].get_input_embeddings().weight.detach().norm(dim=-1).mean()

    def frame_norm(model):
        model.eval()
        frames, frame_lens = model.encode(x, lens)[0]
        return torch.cat([frames[i, : frame_lens[i]] for i in range(2)]).norm(dim=-1).mean()

    normed = make_model(llm_dir)
    assert normed.projectors[0].out_norm.weight.eq(token_embedding_rms(normed.llm)).all()
    assert 0.9 < float(frame_norm(normed) / token_norm) < 1.1
    plain = make_model(llm_dir, projector_norm=False)
    assert plain.projectors[0].out_norm is None
    assert "projectors.0.out_norm.weight" not in plain.trainable_state_dict()
    assert "projectors.0.out_norm.weight" in normed.trainable_state_dict()
    # The scale is learnt from there: the gain is a trainable parameter.
    assert normed.projectors[0].out_norm.weight.requires_grad
    assert abs(float(frame_norm(plain) / token_norm) - 1) > 0.1  # the old init is off that scale


def test_frozen_output_store_serves_the_encoder_outputs_of_seen_utterances(llm_dir):
    model = make_model(llm_dir).eval()
    x, lens = features([40, 33, 27])
    ids = ["a", "b", "c"]
    reference = model(x, lens, TEXTS).loss
    calls = []
    model.encoders[0].register_forward_hook(lambda *_: calls.append(1))
    store = model.keep_frozen_outputs(2**30)
    first = model(x, lens, TEXTS, cut_ids=ids).loss
    assert len(calls) == 1 and len(store) == 3
    # The same utterances in another batch (order, padding): served from the store.
    order = [2, 0]
    again = model(x[order, :33], lens[order], [TEXTS[i] for i in order], cut_ids=[ids[i] for i in order]).loss
    assert len(calls) == 1 and store.hits == 2
    alone = [model(x[i: i + 1, : int(lens[i])], lens[i: i + 1], TEXTS[i: i + 1]).loss for i in order]
    torch.testing.assert_close(first, reference)
    torch.testing.assert_close(again, sum(alone), rtol=1e-4, atol=1e-4)
    # A cut id seen with another input length is not served: recomputed.
    before = len(calls)
    model(x[:1, :30], torch.tensor([30]), TEXTS[:1], cut_ids=["a"])
    assert len(calls) == before + 1


def test_frozen_output_store_budget_and_no_store_when_augmented(llm_dir):
    from speechadapt.bin.train import keep_frozen_outputs
    from speechadapt.data.datamodule import DataConfig
    from speechadapt.training.options import TrainingConfig

    model = make_model(llm_dir).eval()
    x, lens = features([40, 33])
    store = model.keep_frozen_outputs(1)  # too small for any row
    model(x, lens, TEXTS[:2], cut_ids=["a", "b"])
    assert len(store) == 0 and store.full
    assert keep_frozen_outputs(model, TrainingConfig(), DataConfig(enable_spec_aug=True)) is None
    assert keep_frozen_outputs(model, TrainingConfig(), DataConfig(enable_noise_mix=True, noise_cuts="n")) is None
    assert keep_frozen_outputs(model, TrainingConfig(frozen_output_store_gb=0), DataConfig(enable_spec_aug=False)) is None
    assert keep_frozen_outputs(model, TrainingConfig(), DataConfig(enable_spec_aug=False)) is model.frozen_store


def test_ctc_compression_keeps_one_mean_per_label_run():
    from speechadapt.models.ctc_compress import compress_runs

    frames = torch.arange(2 * 7 * 2, dtype=torch.float32).reshape(2, 7, 2)
    labels = torch.tensor([[0, 3, 3, 0, 3, 5, 5],   # runs: 3 | 3 (a blank apart) | 5 5
                           [0, 0, 4, 0, 9, 9, 9]])  # second utterance: 5 valid frames, all blank but one
    lens = torch.tensor([7, 2])
    out, counts = compress_runs(frames, lens, labels, blank_id=0)
    assert counts.tolist() == [3, 1] and out.shape == (2, 3, 2)
    torch.testing.assert_close(out[0, 0], frames[0, 1:3].mean(0))
    torch.testing.assert_close(out[0, 1], frames[0, 4])
    torch.testing.assert_close(out[0, 2], frames[0, 5:7].mean(0))
    torch.testing.assert_close(out[1, 0], frames[1, :2].mean(0))  # only blank in range: the mean of all frames
    labels[1, :2] = 0
    _, counts = compress_runs(frames, torch.tensor([7, 4]), labels, blank_id=0)
    assert counts.tolist() == [3, 1]  # frame 2 (label 4) is its run; 9s lie beyond the length


def test_ctc_compressed_encoder_loads_the_head_and_refuses_a_checkpoint_without_one(tmp_path):
    from speechadapt.models.ctc import ZipformerCtc
    from speechadapt.models.llm_asr_build import load_frozen_encoder

    torch.manual_seed(0)
    ctc = ZipformerCtc(get_preset("tiny", pad_invariant=True), vocab_size=20).eval()
    path = tmp_path / "ctc.pt"
    torch.save({"model": ctc.state_dict()}, path)
    wrapped = load_frozen_encoder(path, "tiny", compress="ctc")
    x, lens = features([60, 44])
    out, counts = wrapped(x, lens)
    enc, enc_lens = ctc.encode(x, lens)
    labels = ctc.ctc_output[1](enc).argmax(-1)
    from speechadapt.models.ctc_compress import compress_runs
    expected, expected_counts = compress_runs(enc, enc_lens, labels, 0)
    assert counts.tolist() == expected_counts.tolist()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    torch.save({"model": {k: v for k, v in ctc.state_dict().items() if not k.startswith("ctc_output")}}, path)
    with pytest.raises(KeyError, match="no CTC head"):
        load_frozen_encoder(path, "tiny", compress="ctc")


def test_ctc_token_projector_starts_on_the_token_embeddings_of_the_pieces(llm_dir):
    from speechadapt.models.ctc_compress import CtcTokenProjector, piece_embedding_table

    llm, tokenizer = load_llm_for_asr(llm_dir)
    emb = llm.get_input_embeddings().weight.detach().float()
    pieces = ["<blk>", " turn", " on", "the", "<unk>"]
    table = piece_embedding_table(pieces, tokenizer, emb, skip=(0,))
    assert table[0].abs().sum() == 0 and table[4].abs().sum() == 0  # blank and special pieces
    ids = tokenizer(" turn", add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(table[1], emb[ids].mean(0))
    proj = CtcTokenProjector(hidden_dim=6, ctc_vocab=5, llm_hidden=emb.size(1), piece_embeddings=table).eval()
    hidden = torch.randn(1, 3, 6)
    posterior = torch.eye(5)[[1, 2, 3]].unsqueeze(0)  # runs heard as " turn", " on", "the"
    out, lens = proj(torch.cat([hidden, posterior], -1), torch.tensor([3]))
    torch.testing.assert_close(out[0], table[[1, 2, 3]])  # the MLP part starts at zero
    assert lens.tolist() == [3]
    out.sum().backward()
    assert proj.linear2.weight.grad.abs().sum() > 0 and proj.piece_embeddings.grad.abs().sum() > 0


def test_ctc_tokens_compression_builds_the_token_projector_and_needs_stack_1(llm_dir, tmp_path):
    import json

    import sentencepiece as spm

    from speechadapt.models.ctc import ZipformerCtc
    from speechadapt.models.ctc_compress import CtcTokenProjector
    from speechadapt.models.llm_asr_build import load_frozen_encoder

    (tmp_path / "text.txt").write_text("\n".join(TEXTS * 20) + "\n")
    spm.SentencePieceTrainer.train(input=str(tmp_path / "text.txt"), model_prefix=str(tmp_path / "bpe"),
                                   vocab_size=25, model_type="unigram", user_defined_symbols=["<blk>"],
                                   minloglevel=2)
    vocab = spm.SentencePieceProcessor(model_file=str(tmp_path / "bpe.model")).get_piece_size()
    torch.manual_seed(0)
    ctc = ZipformerCtc(get_preset("tiny", pad_invariant=True), vocab_size=vocab).eval()
    torch.save({"model": ctc.state_dict()}, tmp_path / "ctc.pt")
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_frozen_encoder(tmp_path / "ctc.pt", "tiny", compress="ctc-tokens")
    (tmp_path / "model.json").write_text(json.dumps({"bpe_model": str(tmp_path / "bpe.model")}))
    encoder = load_frozen_encoder(tmp_path / "ctc.pt", "tiny", compress="ctc-tokens")
    assert encoder.output_dim == encoder.hidden_dim + vocab
    llm, tokenizer = load_llm_for_asr(llm_dir)
    model = LlmAsrModel([encoder], llm, tokenizer, LlmAsrConfig(stack_k=1, **LORA_SMALL))
    assert isinstance(model.projectors[0], CtcTokenProjector)
    x, lens = features([60, 44])
    assert torch.isfinite(model(x, lens, TEXTS[:2]).loss)
    llm, tokenizer = load_llm_for_asr(llm_dir)
    with pytest.raises(ValueError, match="stack-k 1"):
        LlmAsrModel([encoder], llm, tokenizer, LlmAsrConfig(stack_k=4, **LORA_SMALL))
