"""PPTX: one section per slide (its number is the chunk's page), with the
slide title, text boxes in reading order, tables, chart titles and speaker
notes. Pictures are skipped."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

from services.worker.documents.blocks import Block, DocumentInfo
from services.worker.documents.errors import CorruptFile


def parse_pptx(handle: IO[bytes], info: DocumentInfo) -> Iterator[Block | tuple[int, int]]:
    import zipfile

    import pptx
    from pptx.exc import PackageNotFoundError

    try:
        presentation = pptx.Presentation(handle)
    except (PackageNotFoundError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise CorruptFile(f"the PPTX cannot be opened ({exc})") from None
    core = presentation.core_properties
    if core.title:
        info.title = core.title.strip()[:500]
    slides = list(presentation.slides)
    info.pages = len(slides)
    for number, slide in enumerate(slides, start=1):
        title_shape = slide.shapes.title
        title = _text(title_shape.text_frame) if title_shape is not None and title_shape.has_text_frame else ""
        heading = f"Slide {number}: {title}" if title else f"Slide {number}"
        yield Block(heading, kind="heading", page=number, heading_path=(heading,), section_break=True)
        shapes = [s for s in slide.shapes if title_shape is None or s.shape_id != title_shape.shape_id]
        for text, kind in _shapes(shapes):
            yield Block(text, kind=kind, page=number, heading_path=(heading,))
        if slide.has_notes_slide:
            notes = _text(slide.notes_slide.notes_text_frame) if slide.notes_slide.notes_text_frame else ""
            if notes:
                yield Block(f"Notes: {notes}", kind="notes", page=number, heading_path=(heading,))
        yield (number, len(slides))


def _shapes(shapes: list[Any]) -> Iterator[tuple[str, str]]:
    # Reading order: top to bottom, then left to right.
    for shape in sorted(shapes, key=lambda s: ((s.top or 0), (s.left or 0))):
        if shape.shape_type is not None and int(shape.shape_type) == 6:  # a group
            yield from _shapes(list(shape.shapes))
            continue
        if getattr(shape, "has_table", False) and shape.has_table:
            rows = [" | ".join(_text(cell.text_frame) for cell in row.cells) for row in shape.table.rows]
            rows = [row for row in rows if row.strip(" |")]
            if rows:
                yield "\n".join(rows), "table"
        elif getattr(shape, "has_chart", False) and shape.has_chart:
            chart = shape.chart
            if chart.has_title and chart.chart_title.has_text_frame:
                title = _text(chart.chart_title.text_frame)
                if title:
                    yield f"Chart: {title}", "paragraph"
        elif shape.has_text_frame:
            text = _text(shape.text_frame)
            if text:
                yield text, "paragraph"


def _text(frame: Any) -> str:
    return "\n".join(p.text.strip() for p in frame.paragraphs if p.text.strip())
