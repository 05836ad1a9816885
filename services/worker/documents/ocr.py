"""OCR through Tesseract: image uploads (PNG, JPEG, TIFF) and the pages of a
PDF that have no text layer.

Tesseract runs as a command (`TESSERACT_CMD`) from the parsing child, so a
cancelled or timed-out parse stops with it. Its TSV output gives a confidence
per word; a paragraph's confidence is the mean of its words', a block carries
`ocr: true` and `ocr_confidence` (0-100) into its chunk's metadata. The
languages are Tesseract's codes joined by '+' (`chi_sim+chi_tra+eng`);
`payload.ocr_languages` overrides OCR_LANGUAGES.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from services.worker.documents.blocks import Block, DocumentInfo
from services.worker.documents.errors import CorruptFile, DocumentError, MissingTool
from services.worker.documents.text import is_cjk
from services.worker.documents.tools import copy_to_temp, find_tool, run_tool

TIMEOUT_SECONDS = 600  # one image; a 300-dpi A4 page takes seconds
MIN_IMAGE_PIXELS = 32  # smaller images in a PDF page are rules and icons, not text
_LANGUAGE = re.compile(r"^[A-Za-z_]+(?:\+[A-Za-z_]+)*$")


@dataclass(frozen=True)
class OcrOptions:
    command: str
    languages: str
    work_dir: str


def parse_image(handle: IO[bytes], info: DocumentInfo, options: OcrOptions) -> Iterator[Block | tuple[int, int]]:
    """An image upload; a multi-page TIFF gives one page per frame."""
    executable = _tesseract(options)
    copy = copy_to_temp(handle, options.work_dir, ".img")
    try:
        pages = _recognise(executable, copy, options.languages)
    finally:
        os.unlink(copy)
    info.pages = max(pages, default=1)
    info.metadata["ocr_languages"] = options.languages
    for number in sorted(pages):
        yield from _blocks(pages[number], number)
        yield (number, info.pages)


def ocr_pdf_page(page: Any, number: int, options: OcrOptions) -> list[Block]:
    """The text of the images on a PDF page that has no text layer (pypdf page).
    A blank page holds no image and needs no Tesseract."""
    images = list(_page_images(page))
    if not images:
        return []
    executable = _tesseract(options)
    blocks: list[Block] = []
    with tempfile.TemporaryDirectory(dir=options.work_dir) as scratch:
        for index, image in enumerate(images):
            path = os.path.join(scratch, f"{index}{os.path.splitext(image.name)[1] or '.png'}")
            with open(path, "wb") as out:
                out.write(image.data)
            for paragraphs in _recognise(executable, path, options.languages).values():
                blocks.extend(_blocks(paragraphs, number))
    return blocks


def check_languages(languages: str) -> str:
    if not _LANGUAGE.match(languages):
        raise DocumentError(f"OCR languages '{languages[:100]}' are not Tesseract codes joined by '+'")
    return languages


def _tesseract(options: OcrOptions) -> str:
    check_languages(options.languages)
    return find_tool(options.command, "OCR (a scanned page or an image)", "tesseract")


def _page_images(page: Any) -> Iterator[Any]:
    try:
        images = list(page.images)
    except Exception as exc:  # noqa: BLE001 - an undecodable image is reported, the page has nothing else
        raise CorruptFile(f"an image on this scanned page cannot be decoded ({str(exc)[:200]})") from None
    for image in images:
        size = getattr(image, "image", None)
        if size is not None and min(size.width, size.height) < MIN_IMAGE_PIXELS:
            continue
        yield image


Paragraph = tuple[str, float]


def _recognise(executable: str, path: str, languages: str) -> dict[int, list[Paragraph]]:
    """Paragraphs with their mean word confidence, per page of the image."""
    try:
        done = run_tool([executable, path, "stdout", "-l", languages, "tsv"], timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise CorruptFile(f"OCR did not finish one image within {TIMEOUT_SECONDS} s") from None
    if done.returncode != 0:
        raise _failure(done.stderr.decode("utf-8", "replace"), languages)
    return _paragraphs(done.stdout.decode("utf-8", "replace"))


def _failure(stderr: str, languages: str) -> DocumentError:
    if "Failed loading language" in stderr or "Error opening data file" in stderr:
        return MissingTool(f"OCR language data for '{languages}' is not installed on this worker "
                           "(apt-get install tesseract-ocr-<lang>, e.g. tesseract-ocr-chi-sim)")
    lines = [line for line in stderr.splitlines() if line.strip() and "Estimating resolution" not in line]
    return CorruptFile(f"OCR could not read the image ({' '.join(lines)[:200] or 'tesseract failed'})")


def _paragraphs(tsv: str) -> dict[int, list[Paragraph]]:
    pages: dict[int, list[Paragraph]] = {}
    current: tuple[int, int, int] | None = None
    lines: list[list[str]] = []
    line_key: tuple[int, ...] | None = None
    confidences: list[float] = []

    def flush() -> None:
        if current is not None and lines:
            text = _join_words([_join_words(words) for words in lines if words]).strip()
            if text:
                mean = sum(confidences) / len(confidences) if confidences else 0.0
                pages.setdefault(current[0], []).append((text, round(mean, 1)))

    for row in tsv.splitlines()[1:]:
        cols = row.split("\t")
        if len(cols) < 12 or cols[0] != "5":
            continue
        word = cols[11].strip()
        if not word:
            continue
        page, block, par, line = (int(c) for c in cols[1:5])
        if (page, block, par) != current:
            flush()
            current, lines, confidences, line_key = (page, block, par), [], [], None
        if (page, block, par, line) != line_key:
            lines.append([])
            line_key = (page, block, par, line)
        lines[-1].append(word)
        confidences.append(max(0.0, float(cols[10])))
    flush()
    return pages


def _join_words(words: list[str]) -> str:
    """Spaces between words, none between CJK characters (Tesseract splits them)."""
    out = words[0]
    for word in words[1:]:
        out += word if is_cjk(out[-1]) and is_cjk(word[0]) else " " + word
    return out


def _blocks(paragraphs: list[Paragraph], page: int) -> list[Block]:
    return [Block(text, page=page, meta={"ocr": True, "ocr_confidence": confidence})
            for text, confidence in paragraphs]
