"""Where text may be cut, from the strongest boundary to the weakest.

A boundary is the index where a new segment begins: punctuation and the
whitespace after it stay with the segment they end (`你好。` keeps its `。`).
The weakest level, characters, still never cuts inside a character sequence
that renders as one (a base letter and its combining marks, an emoji joined
with ZWJ, a variation selector); Python strings index code points, so a cut
can never fall inside a multi-byte encoding or a surrogate pair.
"""

from __future__ import annotations

import re
import unicodedata

# Closing quotes and brackets that belong to the sentence they close.
_CLOSERS = "\"'”’」』）)】》〉\\]"
LEVELS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("paragraph", re.compile(r"\n[ \t]*\n\s*")),
    ("line", re.compile(r"\n\s*")),
    # Chinese 。！？； end a sentence wherever they stand; . ! ? only before whitespace.
    ("sentence", re.compile(f"(?:[。！？；]+|…+|\\.{{3}})[{_CLOSERS}]*\\s*|[.!?]+[{_CLOSERS}]*(?:\\s+|$)")),
    ("clause", re.compile(f"[，、,：:;][{_CLOSERS}]*\\s*")),
    ("word", re.compile(r"\s+")),
)
_JOINERS = {"\u200d", "\u034f"}


def boundaries(text: str, start: int, end: int, level: int) -> list[int]:
    """Cut positions strictly inside (start, end) at `level` (an index into LEVELS)."""
    pattern = LEVELS[level][1]
    cuts = []
    for match in pattern.finditer(text, start, end):
        position = match.end()
        if start < position < end and safe_cut(text, position):
            cuts.append(position)
    return cuts


def safe_cut(text: str, position: int) -> bool:
    """True when cutting before `text[position]` keeps every rendered character whole."""
    if position <= 0 or position >= len(text):
        return True
    char, previous = text[position], text[position - 1]
    if previous in _JOINERS or char in _JOINERS:
        return False
    if unicodedata.combining(char) or _is_variation_selector(char) or _is_extender(char):
        return False
    return not ("\ud800" <= char <= "\udfff")


def char_cuts(text: str, start: int, end: int, limit: int) -> list[int]:
    """Cuts every `limit` characters or a little earlier, at safe positions."""
    cuts = []
    position = start
    while end - position > limit:
        cut = position + limit
        while cut > position + 1 and not safe_cut(text, cut):
            cut -= 1
        cuts.append(cut)
        position = cut
    return cuts


def _is_variation_selector(char: str) -> bool:
    code = ord(char)
    return 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF or 0x1F3FB <= code <= 0x1F3FF


def _is_extender(char: str) -> bool:
    # Marks that attach to the previous character (spacing combining marks, e.g. Devanagari vowel signs).
    return unicodedata.category(char) in ("Mc", "Me", "Mn")
