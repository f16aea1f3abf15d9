"""Text normalisation before scoring: small and configurable, applied to refs and hyps alike."""

import re
import unicodedata
from dataclasses import dataclass
from typing import List

_PUNCT = re.compile(r"[^\w\s'<>\-]|_", flags=re.UNICODE)


@dataclass
class TextNormConfig:
    lower: bool = True
    remove_punct: bool = True
    # keep apostrophes inside words (don't, it's); drop them when they stand alone.
    keep_apostrophe: bool = True
    unicode_nfkc: bool = True


def normalize_text(text: str, config: TextNormConfig = TextNormConfig()) -> str:
    if config.unicode_nfkc:
        text = unicodedata.normalize("NFKC", text)
    if config.lower:
        text = text.lower()
    if config.remove_punct:
        text = _PUNCT.sub(" ", text)
        text = re.sub(r"(?<!\w)-|-(?!\w)", " ", text)
        if config.keep_apostrophe:
            text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
        else:
            text = text.replace("'", "")
    return " ".join(text.split())


def normalize_words(text: str, config: TextNormConfig = TextNormConfig()) -> List[str]:
    return normalize_text(text, config).split()
