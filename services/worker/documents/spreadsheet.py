"""XLSX: every sheet, rows as records with their column names.

Values are read as values (the cached results of formulas, never the
formulas). Titles above a table become text; the header rows right above the
first row of data name the columns (a header cell merged across several
columns names each of them); each data row becomes `label - column: value; ...`.
Large workbooks are streamed (openpyxl read-only mode; merged ranges are then
unknown, so a merged header names only its first column).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import IO, Any

from services.worker.documents.blocks import Block, DocumentInfo
from services.worker.documents.errors import CorruptFile

STREAM_ABOVE_BYTES = 10 * 1024 * 1024
MAX_HEADER_ROWS = 3


def parse_xlsx(handle: IO[bytes], info: DocumentInfo, file_bytes: int) -> Iterator[Block | tuple[int, int]]:
    import zipfile

    import openpyxl

    streaming = file_bytes > STREAM_ABOVE_BYTES
    try:
        workbook = openpyxl.load_workbook(handle, read_only=streaming, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError) as exc:
        raise CorruptFile(f"the XLSX cannot be opened ({exc})") from None
    sheets = workbook.worksheets
    info.metadata["sheets"] = [ws.title for ws in sheets]
    if workbook.properties.title:
        info.title = workbook.properties.title.strip()[:500]
    for number, sheet in enumerate(sheets, start=1):
        heading = f"Sheet: {sheet.title}"
        meta = {"sheet": sheet.title}
        yield Block(heading, kind="heading", heading_path=(sheet.title,), section_break=True, meta=meta)
        merged = {} if streaming else _merged_fill(sheet)
        for text, kind, row_number in _records(sheet, merged):
            yield Block(text, kind=kind, heading_path=(sheet.title,), meta={**meta, "row": row_number})
        yield (number, len(sheets))
    workbook.close()


def _records(sheet: Any, merged: dict[tuple[int, int], Any]) -> Iterator[tuple[str, str, int]]:
    header: list[str] = []
    candidates: list[tuple[int, list[Any]]] = []
    in_data = False
    for row_number, row in enumerate(sheet.iter_rows(values_only=True), start=1):
        values = [_value(v) for v in row]
        filled = [v for v in values if v != ""]
        if not filled:
            continue
        if _is_data(row):
            if not in_data:
                header = _header(candidates, merged)
                candidates, in_data = [], True
            yield _record(values, header), "row", row_number
        elif len(filled) == 1:
            yield filled[0], "paragraph", row_number  # a title or a note
        else:
            # Strings across columns: a header for the data that follows.
            if in_data:
                in_data = False
            candidates = [*candidates, (row_number, values)][-MAX_HEADER_ROWS:]
    for row_number, values in candidates:  # header-like rows never followed by data are plain text
        yield " | ".join(v for v in values if v), "row", row_number


def _is_data(row: tuple[Any, ...]) -> bool:
    return any(isinstance(v, int | float | dt.date | dt.time) and not isinstance(v, bool) for v in row)


def _header(candidates: list[tuple[int, list[Any]]], merged: dict[tuple[int, int], Any]) -> list[str]:
    width = max((len(values) for _, values in candidates), default=0)
    names = []
    for column in range(width):
        parts: list[str] = []
        for row_number, values in candidates:
            value = values[column] if column < len(values) else ""
            if value == "" and (row_number, column + 1) in merged:
                value = _value(merged[(row_number, column + 1)])
            if value and value not in parts:
                parts.append(value)
        names.append(" / ".join(parts))
    return names


def _record(values: list[str], header: list[str]) -> str:
    label_parts: list[str] = []
    fields: list[str] = []
    for column, value in enumerate(values):
        if value == "":
            continue
        name = header[column] if column < len(header) else ""
        if column == 0 or (not name and not fields):
            label_parts.append(value)
        else:
            fields.append(f"{name}: {value}" if name else value)
    label = " ".join(label_parts)
    return f"{label} - {'; '.join(fields)}" if label and fields else label or "; ".join(fields)


def _merged_fill(sheet: Any) -> dict[tuple[int, int], Any]:
    """(row, column) -> the value of the merged range covering it (beyond its first cell)."""
    fill = {}
    for cell_range in sheet.merged_cells.ranges:
        value = sheet.cell(cell_range.min_row, cell_range.min_col).value
        if value is None:
            continue
        for row in range(cell_range.min_row, cell_range.max_row + 1):
            for column in range(cell_range.min_col, cell_range.max_col + 1):
                if (row, column) != (cell_range.min_row, cell_range.min_col):
                    fill[(row, column)] = value
    return fill


def _value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        return f"{value:.10g}"
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return " ".join(str(value).split())
