"""Qwen2 fixture tokenizer: chat template and the speech special tokens' embedding rows."""

import pytest
import torch

from speechadapt.models.hf import add_special_tokens, load_qwen2, token_rows_distinct
from speechadapt.models.hf.fixtures import make_tiny_qwen2, train_bpe_tokenizer
from speechadapt.models.llm_asr_prompt import prompt_text

torch.set_num_threads(1)

SPEECH = ["<start_speech>", "<speech>", "<end_speech>"]
# The LLM-ASR prompt (docs/architecture.md), written out literally.
DESIGN_PROMPT = (
    "<|im_start|>user\n<start_speech><speech><end_speech><|im_end|>\n"
    "<|im_start|>assistant\n{text}<|im_end|>"
)


@pytest.fixture(scope="module")
def qwen_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen2")
    return {
        "free": make_tiny_qwen2(root / "free"),
        "full": make_tiny_qwen2(root / "full", free_rows=0),
        "untied": make_tiny_qwen2(root / "untied", free_rows=0, tie_word_embeddings=False),
    }


def _messages(text=None):
    msgs = [{"role": "user", "content": "<start_speech><speech><end_speech>"}]
    if text is not None:
        msgs.append({"role": "assistant", "content": text})
    return msgs


def test_chat_template_renders_design_prompt(qwen_dirs):
    _, tok = load_qwen2(qwen_dirs["free"])
    text = "turn on the kitchen lights"
    rendered = tok.apply_chat_template(_messages(text), tokenize=False)
    assert rendered == DESIGN_PROMPT.format(text=text)
    assert rendered == prompt_text(1, text)  # the LLM-ASR code's own rendering agrees
    generation = tok.apply_chat_template(_messages(), tokenize=False, add_generation_prompt=True)
    assert generation == DESIGN_PROMPT.split("{text}")[0]
    assert generation.endswith("<|im_start|>assistant\n") and "system" not in generation


def test_qwen2_special_tokens_are_single_ids(qwen_dirs):
    _, tok = load_qwen2(qwen_dirs["free"])
    ids = [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")]
    assert len(set(ids)) == 3 and min(ids) >= len(tok) - 3  # after the learned pieces, as in Qwen2
    encoded = tok("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)["input_ids"]
    assert encoded[0] == ids[1] and encoded[-1] == ids[2]
    assert tok.pad_token_id == ids[0] and tok.eos_token_id == ids[2]


def _check_new_rows(model, tok, ids, rows_before, old_weight):
    assert ids == [tok.convert_tokens_to_ids(t) for t in SPEECH] and len(set(ids)) == 3
    assert token_rows_distinct(model, ids)
    weight = model.get_input_embeddings().weight
    assert min(ids) >= rows_before - 3 or min(ids) >= len(tok) - 3
    # The rows differ from every pre-existing row and the old rows are untouched.
    assert torch.equal(weight[: old_weight.shape[0]][: min(ids)], old_weight[: min(ids)])
    assert torch.cdist(weight[ids], weight[: min(ids)]).min() > 0
    for t, i in zip(SPEECH, ids):
        assert tok(f"a{t}b", add_special_tokens=False)["input_ids"].count(i) == 1


def test_add_special_tokens_uses_free_rows(qwen_dirs):
    model, tok = load_qwen2(qwen_dirs["free"])
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows >= len(tok) + 3
    old = model.get_input_embeddings().weight.detach().clone()
    ids = add_special_tokens(model, tok, SPEECH)
    assert model.get_input_embeddings().weight.shape[0] == rows  # no resize needed
    _check_new_rows(model, tok, ids, rows, old)
    # Adding them again changes nothing.
    snapshot = model.get_input_embeddings().weight.detach().clone()
    assert add_special_tokens(model, tok, SPEECH) == ids
    assert torch.equal(model.get_input_embeddings().weight, snapshot)


@pytest.mark.parametrize("which", ["full", "untied"])
def test_add_special_tokens_resizes_when_full(qwen_dirs, which):
    model, tok = load_qwen2(qwen_dirs[which])
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows == len(tok)
    old = model.get_input_embeddings().weight.detach().clone()
    ids = add_special_tokens(model, tok, SPEECH)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] == head.shape[0] == rows + 3 == model.config.vocab_size
    _check_new_rows(model, tok, ids, rows, old)
    if which == "untied":
        assert emb.data_ptr() != head.data_ptr()
        assert torch.cdist(head[ids], head[ids]).add(torch.eye(3)).min() > 0
    else:
        assert emb.data_ptr() == head.data_ptr()
    # The new rows are trainable: a loss on them sends gradient to exactly those rows.
    logits = model(input_ids=torch.tensor([ids])).logits
    logits.sum().backward()
    assert model.get_input_embeddings().weight.grad[ids].abs().sum(dim=1).gt(0).all()


def test_special_tokens_survive_save_and_reload(qwen_dirs, tmp_path):
    model, tok = load_qwen2(qwen_dirs["full"])
    ids = add_special_tokens(model, tok, SPEECH)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model2, tok2 = load_qwen2(tmp_path)
    assert [tok2.convert_tokens_to_ids(t) for t in SPEECH] == ids
    assert torch.equal(model2.get_input_embeddings().weight[ids], model.get_input_embeddings().weight[ids])


def test_train_bpe_tokenizer_learns_from_text(tmp_path):
    texts = ["zebra crossing ahead"] * 20 + ["quantum zebra"] * 5
    tok = train_bpe_tokenizer(texts, tmp_path, vocab_size=300)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "tokenizer_config.json").is_file()
    assert len(tok(" zebra", add_special_tokens=False)["input_ids"]) == 1
    assert len(tok(" giraffe", add_special_tokens=False)["input_ids"]) > 1
    assert len(tok) <= 300
    with pytest.raises(ValueError, match="no non-empty text"):
        train_bpe_tokenizer(["  "], tmp_path / "x", 300)
