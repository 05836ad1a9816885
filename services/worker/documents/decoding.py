"""Bytes to text: the encoding is detected, never guessed silently.

UTF-8 (with or without BOM) and UTF-16/32 with a BOM are taken as they are;
anything else goes to charset-normalizer. GBK and GB2312 are read as GB18030
(their superset: a strict GBK decoder fails on characters such as Hangul that
only GB18030 encodes) and Big5 as Big5-HKSCS. Decoding is strict: a byte that
does not fit the detected encoding fails the document with the position,
instead of turning into U+FFFD.
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Iterator
from typing import IO

from services.worker.documents.errors import CorruptFile, UnsupportedFormat

SAMPLE_BYTES = 1 << 20
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030", "cp936": "gb18030", "big5": "big5hkscs", "cp950": "big5hkscs"}


def detect_encoding(sample: bytes, *, complete: bool) -> str:
    """The Python codec for text starting with `sample` (the whole file when `complete`)."""
    for bom, encoding in _BOMS:
        if sample.startswith(bom):
            return encoding
    if _is_utf8(sample, complete=complete):
        return "utf-8"
    from charset_normalizer import from_bytes

    best = from_bytes(sample).best()
    if best is None:
        raise UnsupportedFormat("the file is not text in any encoding we recognise (binary data?)")
    encoding = codecs.lookup(best.encoding).name
    return _SUPERSETS.get(encoding, encoding)


def _is_utf8(sample: bytes, *, complete: bool) -> bool:
    try:
        sample.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        # A sample may end inside a multi-byte character; that is not a failure.
        return not complete and exc.start >= len(sample) - 3 and exc.reason == "unexpected end of data"


def open_text(handle: IO[bytes], *, newline: str | None = None) -> tuple[io.TextIOWrapper, str]:
    """A strict text stream over `handle` and the encoding it uses."""
    sample = handle.read(SAMPLE_BYTES)
    complete = len(sample) < SAMPLE_BYTES
    handle.seek(0)
    encoding = detect_encoding(sample, complete=complete)
    return io.TextIOWrapper(handle, encoding=encoding, errors="strict", newline=newline), encoding


def read_all_text(handle: IO[bytes]) -> tuple[str, str]:
    stream, encoding = open_text(handle)
    return "".join(iter_text(stream, encoding)), encoding


def iter_text(stream: io.TextIOWrapper, encoding: str, chunk_chars: int = 1 << 16) -> Iterator[str]:
    """The text in pieces; a decoding error names the encoding instead of escaping as a traceback."""
    try:
        while piece := stream.read(chunk_chars):
            yield piece
    except UnicodeDecodeError as exc:
        raise CorruptFile(
            f"the text is not valid {encoding} (detected from its first bytes): {exc.reason} near byte {exc.start}"
        ) from None


def iter_lines(stream: io.TextIOWrapper, encoding: str) -> Iterator[str]:
    try:
        yield from stream
    except UnicodeDecodeError as exc:
        raise CorruptFile(
            f"the text is not valid {encoding} (detected from its first bytes): {exc.reason}"
        ) from None
