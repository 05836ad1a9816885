"""CSV/TSV: streamed row by row, each row a record `column: value` per line.

The dialect (delimiter, quoting) is sniffed from the first rows. The first
row is the header unless it looks like data (numbers where later rows have
them, or no text at all); an unnamed column (a pandas index) is called
`column N`. A 300k-row file never sits in memory whole.
"""

from __future__ import annotations

import csv
import itertools
import sys
from collections.abc import Iterator
from typing import IO

from services.worker.documents.blocks import Block, DocumentInfo
from services.worker.documents.decoding import open_text
from services.worker.documents.errors import CorruptFile

SNIFF_CHARS = 64 * 1024
PROGRESS_EVERY_ROWS = 5000


def parse_csv(handle: IO[bytes], info: DocumentInfo, name: str) -> Iterator[Block | tuple[int, int]]:
    stream, encoding = open_text(handle, newline="")  # the csv module handles line ends
    info.metadata["encoding"] = encoding
    csv.field_size_limit(sys.maxsize)
    try:
        sample = stream.read(SNIFF_CHARS)
    except UnicodeDecodeError as exc:
        raise CorruptFile(f"the text is not valid {encoding}: {exc.reason}") from None
    stream.seek(0)
    dialect = _dialect(sample, name)
    reader = csv.reader(stream, dialect)
    try:
        first = next(reader, None)
        if first is None:
            return
        peek = list(itertools.islice(reader, 5))
        if _is_header(first, peek):
            header = [cell.strip() or f"column {i}" for i, cell in enumerate(first, start=1)]
            rows = peek
            start = 2
        else:
            header, rows, start = [], [first, *peek], 1
        info.metadata["columns"] = header[:200]
        number = start - 1
        for number, row in enumerate(itertools.chain(rows, reader), start=start):
            text = _record(row, header)
            if text:
                yield Block(text, kind="row", meta={"row": number})
            if number % PROGRESS_EVERY_ROWS == 0:
                yield (number, 0)
        info.metadata["rows"] = number - start + 1
    except csv.Error as exc:
        raise CorruptFile(f"the CSV is malformed near line {reader.line_num}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise CorruptFile(f"the text is not valid {encoding} (detected from its first bytes): {exc.reason}") from None


def _dialect(sample: str, name: str) -> type[csv.Dialect] | csv.Dialect:
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        return csv.excel_tab if name.lower().endswith(".tsv") else csv.excel


def _is_header(first: list[str], rest: list[list[str]]) -> bool:
    named = [cell for cell in first if cell.strip()]
    if not named or any(_is_number(cell) for cell in named):
        return False
    if len(set(named)) != len(named):
        return False
    return bool(rest) or len(named) > 1


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def _record(row: list[str], header: list[str]) -> str:
    lines = []
    for i, value in enumerate(row):
        value = value.strip()
        if not value:
            continue
        name = header[i] if i < len(header) else f"column {i + 1}" if header else ""
        lines.append(f"{name}: {value}" if name else value)
    return "\n".join(lines) if header else " | ".join(lines)
