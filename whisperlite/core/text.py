"""Text clean-up shared by the dataset converters and the request simulator, and what counts as a visible text."""

from __future__ import annotations

import html
import re
import unicodedata

_WHITESPACE = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# A named, decimal or hex character reference that html.unescape would decode.
HTML_ENTITY = re.compile(r"&(?:[A-Za-z][A-Za-z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});")

# Requests are cut to what a text tower reads: CLIP's text tower stops at 77 BPE tokens, about
# 50 English words; MiniLM reads 256 word pieces but was trained on 128.
REQUEST_MAX_WORDS = 50


# Characters that show nothing on their own: controls, format characters (zero-width spaces, joiners, the BOM, soft
# hyphens), unassigned code points (Cn, by this Python's Unicode database: nothing to draw), separators and combining
# marks with no base (variation selectors among them). A text made only of them embeds as the empty text.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn", "Zs", "Zl", "Zp", "Mn", "Me"})
# Letters and symbols that draw as blank: the Unicode Default_Ignorable_Code_Point characters (DerivedCoreProperties.txt)
# outside the categories above, which are the Hangul fillers U+115F, U+1160, U+3164 and U+FFA0, and the Braille blank.
_BLANK_CHARACTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def has_visible_characters(text: str) -> bool:
    """Whether `text` shows something: the one rule for queries, ids and categories that must not be blank."""
    return any(char not in _BLANK_CHARACTERS and unicodedata.category(char) not in _INVISIBLE_CATEGORIES for char in text)


def clean_text(value: object) -> str:
    """Unescape HTML entities until none is left (sources escape repeatedly: the women's
    clothing reviews hold ``&amp;amp;amp;amp;#39;`` for an apostrophe) and collapse
    whitespace. ``None``/NaN become the empty string."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    text = str(value)
    while "&" in text:
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    return _WHITESPACE.sub(" ", text).strip()


def truncate_words(text: str, max_words: int = REQUEST_MAX_WORDS) -> str:
    """Shorten ``text`` to at most ``max_words`` words, keeping whole sentences when the first
    sentences fit and cutting at a word boundary otherwise (never mid-word)."""
    words = text.split()
    if len(words) <= max_words:
        return text
    kept: list[str] = []
    count = 0
    for sentence in _SENTENCE_END.split(text):
        n = len(sentence.split())
        if count + n > max_words:
            break
        kept.append(sentence)
        count += n
    if kept:
        return " ".join(kept)
    return " ".join(words[:max_words])


def user_request(*parts: object, max_words: int = REQUEST_MAX_WORDS) -> str:
    """A request from user-written text: the non-empty parts (e.g. review title and body)
    cleaned, joined as sentences and truncated to ``max_words``."""
    cleaned = [clean_text(p) for p in parts]
    cleaned = [p for p in cleaned if p]
    joined = " ".join(p if p[-1] in ".!?" else p + "." for p in cleaned[:-1])
    if cleaned:
        joined = f"{joined} {cleaned[-1]}".strip()
    return truncate_words(joined, max_words)
