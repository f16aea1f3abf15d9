"""Text normalisation before scoring: small and configurable, applied to refs and hyps alike.

Three normalisers can be chosen for decoding (``--text-norm``, :func:`make_normalizer`):

* ``default``: :func:`normalize_words` (NFKC, lower case, punctuation dropped, apostrophes
  inside words kept). Combining marks (Unicode category M: Devanagari vowel signs and
  virama, Arabic vowel points, ...) are part of the word and kept.
* ``whisper``: Whisper's own normaliser as transformers ships it: ``EnglishTextNormalizer``
  for English, ``BasicTextNormalizer`` for every other language. The basic one turns
  every combining mark into a space, so in Brahmic scripts a word falls apart into bare
  consonants (Hindi "नमस्ते" -> "नमस त"): reference word counts grow, different words
  collapse, WERs drop (Manohar et al., EMNLP 2024). Use it to compare with published
  figures that used it, not as the only number.
* ``none``: whitespace split of the raw text (what ``evaluate``'s WER scores when no
  normaliser runs, as in the public ZO-ASR code).
"""

import re
import unicodedata
from dataclasses import dataclass
from typing import Callable, List, Optional

_PUNCT = re.compile(r"[^\w\s'<>\-]|_", flags=re.UNICODE)
TEXT_NORMS = ("default", "whisper", "none")


@dataclass
class TextNormConfig:
    lower: bool = True
    remove_punct: bool = True
    # keep apostrophes inside words (don't, it's); drop them when they stand alone.
    keep_apostrophe: bool = True
    unicode_nfkc: bool = True


def _drop_punctuation(text: str) -> str:
    """Punctuation and symbols -> space; combining marks (which ``\\w`` does not match) kept."""
    return "".join(" " if _PUNCT.match(c) and not unicodedata.category(c).startswith("M") else c for c in text)


def normalize_text(text: str, config: TextNormConfig = TextNormConfig()) -> str:
    if config.unicode_nfkc:
        text = unicodedata.normalize("NFKC", text)
    if config.lower:
        text = text.lower()
    if config.remove_punct:
        text = _drop_punctuation(text)
        text = re.sub(r"(?<!\w)-|-(?!\w)", " ", text)
        if config.keep_apostrophe:
            text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
        else:
            text = text.replace("'", "")
    return " ".join(text.split())


def normalize_words(text: str, config: TextNormConfig = TextNormConfig()) -> List[str]:
    return normalize_text(text, config).split()


def make_normalizer(name: str = "default", language: Optional[str] = None) -> Callable[[str], List[str]]:
    """text -> scored words, for ``--text-norm NAME`` (``language``: Whisper's choice of
    its English or its basic normaliser; None counts as English)."""
    if name == "default":
        return normalize_words
    if name == "none":
        return str.split
    if name == "whisper":
        from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

        english = (language or "en").lower() in ("en", "english")
        # no spelling map: the British -> American table ships with a checkpoint's normalizer.json
        norm = EnglishTextNormalizer({}) if english else BasicTextNormalizer()
        return lambda text: norm(text).split()
    raise ValueError(f"unknown text normaliser {name!r}; choose from {TEXT_NORMS}")


def characters(words: List[str]) -> List[str]:
    """The characters CER counts: the normalised words joined by single spaces (spaces
    count, as in jiwer's and Hugging Face evaluate's CER)."""
    return list(" ".join(words))
