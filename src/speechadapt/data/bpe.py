"""sentencepiece BPE model and token table in icefall's layout.

``<lang_dir>/bpe.model``, ``tokens.txt`` ("symbol id" lines) and
``transcript_words.txt`` (the training text it was trained on, one sentence a line;
also the text for language-model pre-training). Ids as icefall: ``<blk>`` 0,
``<sos/eos>`` 1, ``<unk>`` 2. Model type ``unigram`` (icefall's default), full
character coverage. Trained on the *source training* text only, so no dev, test or
target sentence leaks into the vocabulary or the LM text.
"""

import logging
import re
from pathlib import Path
from typing import Iterable, List

logger = logging.getLogger(__name__)

BLANK, SOS_EOS, UNK = "<blk>", "<sos/eos>", "<unk>"


class VocabSizeError(ValueError):
    """The requested vocabulary is larger than the training text supports."""


def write_transcripts(texts: Iterable[str], path) -> Path:
    """One normalised (whitespace-collapsed, lower-cased) sentence per line; empty ones dropped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [" ".join(t.lower().split()) for t in texts]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError("no non-empty transcripts to train a BPE model on")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def train_bpe(transcript_path, lang_dir, vocab_size: int, model_type: str = "unigram") -> Path:
    """Train ``<lang_dir>/bpe.model``; a vocabulary the text cannot support is a
    :class:`VocabSizeError` that says the largest size that would work."""
    import sentencepiece as spm

    lang_dir = Path(lang_dir)
    lang_dir.mkdir(parents=True, exist_ok=True)
    prefix = lang_dir / "unigram" if model_type == "unigram" else lang_dir / model_type
    try:
        spm.SentencePieceTrainer.train(
            input=str(transcript_path), model_prefix=str(prefix), vocab_size=vocab_size,
            model_type=model_type, character_coverage=1.0, input_sentence_size=100_000_000,
            user_defined_symbols=[BLANK, SOS_EOS], unk_id=2, bos_id=-1, eos_id=-1,
            num_threads=1,  # multi-threaded EM gives slightly different scores run to run
            minloglevel=2,
        )
    except RuntimeError as exc:
        limit = re.search(r"value <= (\d+)", str(exc))
        if limit:
            raise VocabSizeError(
                f"--vocab-size {vocab_size} is too large for the text in {transcript_path}: "
                f"it supports at most {limit.group(1)} pieces; pass --vocab-size "
                f"{limit.group(1)} or less") from exc
        raise
    model = lang_dir / "bpe.model"
    Path(f"{prefix}.model").replace(model)
    Path(f"{prefix}.vocab").unlink(missing_ok=True)
    return model


def write_tokens(model_path, tokens_path) -> List[str]:
    """``tokens.txt`` with every piece and its id; checks icefall's special ids."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    for symbol, expected in ((BLANK, 0), (SOS_EOS, 1), (UNK, 2)):
        if pieces[expected] != symbol:
            raise ValueError(f"{model_path}: expected {symbol} at id {expected}, found {pieces[expected]!r}")
    Path(tokens_path).write_text("".join(f"{p} {i}\n" for i, p in enumerate(pieces)), encoding="utf-8")
    return pieces


def prepare_lang_bpe(texts: Iterable[str], lang_dir, vocab_size: int,
                     model_type: str = "unigram") -> Path:
    """Transcripts -> bpe.model + tokens.txt in ``lang_dir``; returns the model path."""
    lang_dir = Path(lang_dir)
    transcripts = write_transcripts(texts, lang_dir / "transcript_words.txt")
    model = train_bpe(transcripts, lang_dir, vocab_size, model_type)
    pieces = write_tokens(model, lang_dir / "tokens.txt")
    logger.info("%s: %d pieces (%s)", model, len(pieces), model_type)
    return model
