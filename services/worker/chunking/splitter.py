"""Cutting one oversized span of text into pieces no longer than a limit, at
the strongest boundaries that fit (paragraphs, lines, sentences, clauses,
words, then characters), merging neighbours back up to the limit so pieces
stay as large as the limit allows."""

from __future__ import annotations

from itertools import pairwise

from services.worker.chunking.boundaries import LEVELS, boundaries, char_cuts, safe_cut


def split_span(text: str, start: int, end: int, limit: int) -> list[tuple[int, int]]:
    """Pieces `(start, end)` that tile `text[start:end]`, each at most `limit` long."""
    if limit < 1:
        raise ValueError("limit must be positive")
    return _split(text, start, end, limit, 0)


def _split(text: str, start: int, end: int, limit: int, level: int) -> list[tuple[int, int]]:
    if end - start <= limit:
        return [(start, end)]
    if level == len(LEVELS):
        cuts = char_cuts(text, start, end, limit)
        edges = [start, *cuts, end]
        return list(pairwise(edges))
    cuts = boundaries(text, start, end, level)
    if not cuts:
        return _split(text, start, end, limit, level + 1)
    edges = [start, *cuts, end]
    pieces: list[tuple[int, int]] = []
    for a, b in pairwise(edges):
        pieces.extend(_split(text, a, b, limit, level + 1))
    return _merge(pieces, limit)


def _merge(pieces: list[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in pieces:
        if merged and b - merged[-1][0] <= limit:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


def overlap_start(text: str, window_start: int, end: int) -> int | None:
    """The earliest position in [window_start, end) at the strongest boundary level
    that has one there (a sentence start rather than a word start), else the
    first position that does not cut a character; None if the window is empty."""
    if window_start >= end:
        return None
    for level in range(len(LEVELS)):
        # Look a little before the window: a separator may begin before it and end inside.
        cuts = [c for c in boundaries(text, max(0, window_start - 8), end, level) if c >= window_start]
        if cuts:
            return cuts[0]
    for position in range(window_start, end):
        if safe_cut(text, position):
            return position
    return None
