"""Tiny offline Hugging Face checkpoints built from configs (tests, the synth recipe).

Each builder writes a directory laid out like the real checkpoint (config.json,
model.safetensors, tokenizer / processor files) that the loaders in
:mod:`speechadapt.models.hf.loading` read back exactly as they read a download.
Nothing here touches the network; weights are random but seeded.
"""

import json
import logging
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union

import torch

PathLike = Union[str, Path]

QWEN2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Qwen2's pre-tokenisation split (contractions, letters, single digits, punctuation, spaces).
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# ChatML without a default system turn, so the LLM-ASR prompt renders literally.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' }}"
    "{% if not loop.last or add_generation_prompt %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)



def whisper_languages() -> List[str]:
    """Whisper's language codes in its token order: the tokenizer finds a language's token at
    <|startoftranscript|> + 1 + its index in this list, so the fixture holds them all."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return list(LANGUAGES)

WHISPER_TASKS = ("translate", "transcribe")

# wav2vec2-base-960h's character vocabulary, in its order (blank = <pad> = 0).
CTC_CHARS = ("<pad>", "<s>", "</s>", "<unk>", "|") + tuple("ETAONIHSRDLUMWCFGYPBVK'XJQZ")

DEFAULT_TEXTS = (
    "turn on the kitchen lights",
    "set an alarm for seven thirty in the morning",
    "call alice at nine fifteen",
    "what is the weather like in paris today",
    "play some music in the living room",
    "remind me to buy milk and bread tomorrow",
    "open the garage door please",
    "how many minutes until twelve o'clock",
    "send a message to bob saying i will be late",
    "switch off the heating at eleven",
    "the quick brown fox jumps over the lazy dog",
    "numbers one two three four five six seven eight nine ten",
)


def _build(model_cls, config, seed: int):
    """Instantiate under a private seed without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cls(config).eval()


def _texts(texts: Optional[Iterable[str]]) -> List[str]:
    out = [t.strip() for t in (texts if texts is not None else DEFAULT_TEXTS) if t.strip()]
    if not out:
        raise ValueError("no non-empty text to train a tokenizer on")
    return out


def _byte_level_bpe(texts: Sequence[str], vocab_size: int, qwen2_split: bool, specials: Sequence[str]):
    """A `tokenizers` byte-level BPE trained on ``texts``, specials appended after it."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    if qwen2_split:
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet):
        raise ValueError(f"vocab_size {vocab_size} is below the {len(alphabet)} byte symbols")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    # Specials go after the learned pieces, as in the real Qwen2 / Whisper vocabularies.
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tokenizer


def train_bpe_tokenizer(texts: Iterable[str], out_dir: PathLike, vocab_size: int = 512):
    """Qwen2-style tokenizer (byte-level BPE + ChatML specials + chat template), saved to ``out_dir``.

    ``<|endoftext|>`` pads, ``<|im_end|>`` ends a chat turn (eos), as in Qwen2-Instruct.
    Returns the tokenizer; the vocabulary may be smaller than ``vocab_size`` on small text.
    """
    from transformers import Qwen2Tokenizer

    backend = _byte_level_bpe(_texts(texts), vocab_size - len(QWEN2_SPECIALS), True, QWEN2_SPECIALS)
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        extra_special_tokens=list(QWEN2_SPECIALS[1:]),
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
    )
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def make_tiny_qwen2(
    out_dir: PathLike,
    texts: Optional[Iterable[str]] = None,
    tokenizer_vocab_size: int = 512,
    free_rows: int = 13,
    seed: int = 0,
    **overrides,
) -> Path:
    """A 2-layer, d-256 Qwen2 causal LM plus its tokenizer in ``out_dir``.

    The embedding has ``free_rows`` spare rows beyond the tokenizer (like Qwen2's
    151936 vs 151646); ``free_rows=0`` or ``vocab_size=...`` in ``overrides`` makes a
    model whose vocabulary must be resized to take new tokens. Other ``overrides``
    are Qwen2Config fields.
    """
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    tokenizer = train_bpe_tokenizer(texts, out, tokenizer_vocab_size)
    fields = dict(
        vocab_size=len(tokenizer) + free_rows,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    fields.update(overrides)
    if fields["vocab_size"] < len(tokenizer):
        raise ValueError(f"vocab_size {fields['vocab_size']} is below the tokenizer's {len(tokenizer)} entries")
    model = _build(Qwen2ForCausalLM, Qwen2Config(**fields), seed)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out)
    logging.info("tiny Qwen2 (%d parameters) written to %s", count_parameters(model), out)
    return out


WHISPER_PRESETS = {
    # Small enough for unit tests; 80 mel bins and 30 s windows as every Whisper.
    "test": dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                 decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
                 max_target_positions=64),
    # openai/whisper-tiny's shapes (39M parameters) with random weights, for benchmarks.
    "whisper-tiny-shapes": dict(d_model=384, encoder_layers=4, decoder_layers=4, encoder_attention_heads=6,
                                decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536,
                                max_target_positions=448, vocab_size=51865),
}


def _whisper_specials() -> List[str]:
    return (["<|endoftext|>", "<|startoftranscript|>"] + [f"<|{lang}|>" for lang in whisper_languages()]
            + [f"<|{task}|>" for task in WHISPER_TASKS]
            + ["<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"])


def _whisper_tokenizer(texts: Sequence[str], vocab_size: int, max_length: int):
    from transformers import WhisperTokenizer

    specials = _whisper_specials()
    backend = _byte_level_bpe(texts, vocab_size - len(specials), False, specials)
    tokenizer = WhisperTokenizer(tokenizer_object=backend, language="en", task="transcribe",
                                 predict_timestamps=False)
    tokenizer.model_max_length = max_length
    return tokenizer


def _whisper_generation_config(tokenizer, max_length: int):
    from transformers import GenerationConfig

    token_id = tokenizer.convert_tokens_to_ids
    eot = token_id("<|endoftext|>")
    return GenerationConfig(
        decoder_start_token_id=token_id("<|startoftranscript|>"),
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=max_length,
        is_multilingual=True,
        lang_to_id={f"<|{lang}|>": token_id(f"<|{lang}|>") for lang in whisper_languages()},
        task_to_id={task: token_id(f"<|{task}|>") for task in WHISPER_TASKS},
        no_timestamps_token_id=token_id("<|notimestamps|>"),
        suppress_tokens=[],
        begin_suppress_tokens=[eot],
    )


def make_tiny_whisper(
    out_dir: PathLike,
    texts: Optional[Iterable[str]] = None,
    preset: str = "test",
    tokenizer_vocab_size: int = 384,
    seed: int = 0,
    **overrides,
) -> Path:
    """A tiny multilingual-style Whisper (model, tokenizer, feature extractor) in ``out_dir``.

    ``preset="whisper-tiny-shapes"`` copies openai/whisper-tiny's sizes; its 51865-row
    vocabulary is wider than the toy tokenizer, and the adapter drops ids the
    tokenizer cannot spell. ``overrides`` are WhisperConfig fields.
    """
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    if preset not in WHISPER_PRESETS:
        raise ValueError(f"unknown Whisper preset {preset!r}; expected one of {sorted(WHISPER_PRESETS)}")
    fields = dict(num_mel_bins=80, max_source_positions=1500, dropout=0.0)
    fields.update(WHISPER_PRESETS[preset])
    fields.update(overrides)
    max_length = fields["max_target_positions"]
    tokenizer = _whisper_tokenizer(_texts(texts), tokenizer_vocab_size, max_length)
    fields.setdefault("vocab_size", len(tokenizer))
    if fields["vocab_size"] < len(tokenizer):
        raise ValueError(f"vocab_size {fields['vocab_size']} is below the tokenizer's {len(tokenizer)} entries")
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    sot = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    # Suppression lists live in the generation config only (the config defaults name GPT-2 ids).
    fields.update(begin_suppress_tokens=None, suppress_tokens=None)
    config = WhisperConfig(pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot, **fields)
    model = _build(WhisperForConditionalGeneration, config, seed)
    model.generation_config = _whisper_generation_config(tokenizer, max_length)
    feature_extractor = WhisperFeatureExtractor(feature_size=fields["num_mel_bins"], sampling_rate=16000)
    out = Path(out_dir)
    model.save_pretrained(out)
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(out)
    logging.info("tiny Whisper '%s' (%d parameters) written to %s", preset, count_parameters(model), out)
    return out


def _ctc_config(kind: str, vocab_size: int, overrides: dict):
    from transformers import HubertConfig, Wav2Vec2Config

    fields = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        # Four conv layers with total stride 320 (20 ms frames at 16 kHz, as the real models).
        conv_dim=(32, 32, 32, 32),
        conv_kernel=(10, 8, 4, 4),
        conv_stride=(5, 4, 4, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        pad_token_id=0,
        ctc_loss_reduction="sum",
        mask_time_prob=0.0,
        layerdrop=0.0,
    )
    # wav2vec2-base uses a group-norm front end; hubert-large a layer-norm one (with masks).
    if kind == "wav2vec2":
        fields.update(feat_extract_norm="group", do_stable_layer_norm=False)
    else:
        fields.update(feat_extract_norm="layer", do_stable_layer_norm=True)
    fields.update(overrides)
    return (Wav2Vec2Config if kind == "wav2vec2" else HubertConfig)(**fields)


def make_tiny_ctc(out_dir: PathLike, kind: str = "wav2vec2", seed: int = 0, **overrides) -> Path:
    """A tiny wav2vec2 / HuBERT CTC model with a character vocabulary and processor."""
    from transformers import (HubertForCTC, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC,
                              Wav2Vec2Processor)

    if kind not in ("wav2vec2", "hubert"):
        raise ValueError(f"kind must be 'wav2vec2' or 'hubert', got {kind!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab_file = out / "vocab.json"
    vocab_file.write_text(json.dumps({c: i for i, c in enumerate(CTC_CHARS)}))
    tokenizer = Wav2Vec2CTCTokenizer(str(vocab_file), unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                     eos_token="</s>", word_delimiter_token="|", do_lower_case=False)
    config = _ctc_config(kind, len(CTC_CHARS), overrides)
    layer_norm_front_end = config.feat_extract_norm == "layer"
    feature_extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                                 do_normalize=True, return_attention_mask=layer_norm_front_end)
    model = _build(Wav2Vec2ForCTC if kind == "wav2vec2" else HubertForCTC, config, seed)
    model.save_pretrained(out)
    Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(out)
    logging.info("tiny %s CTC (%d parameters) written to %s", kind, count_parameters(model), out)
    return out


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameter elements (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())
