"""OCR (Tesseract) of image uploads and scanned PDF pages, and legacy Word
(.doc) through antiword: the parsing step in-process, on real files
(tests/data/scans_and_legacy/README.md says where each comes from).
tests/pipeline/test_ocr_pipeline.py runs them through the fleet."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.worker.documents.blocks import Block, read_spool_lines
from services.worker.documents.errors import (
    ContentMismatch,
    CorruptFile,
    DocumentError,
    MissingTool,
)
from services.worker.documents.extract import ExtractionJob, ExtractionSummary, extract_document

DATA = Path(__file__).parent / "data" / "scans_and_legacy"
needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None,
                                     reason="tesseract is not installed (apt-get install tesseract-ocr ...)")
needs_antiword = pytest.mark.skipif(shutil.which("antiword") is None,
                                    reason="antiword is not installed (apt-get install antiword)")


def extract(path: Path, tmp_path: Path, name: str | None = None, **options: object) -> tuple[ExtractionSummary,
                                                                                          list[Block]]:
    spool = tmp_path / "spool.jsonl"
    job = ExtractionJob(str(path), name or path.name, str(spool), 200 << 20, 10**7, **options)  # type: ignore[arg-type]
    summary = extract_document(job)
    with open(spool, "rb") as handle:
        blocks = [b for b in read_spool_lines(iter(handle.read().splitlines())) if isinstance(b, Block)]
    assert all(b.text.strip() for b in blocks)
    assert list(tmp_path.iterdir()) == [spool], "the tool's private copies are removed"
    return summary, blocks


def words(blocks: list[Block]) -> str:
    return " ".join(" ".join(b.text for b in blocks).lower().split())


@needs_tesseract
def test_the_scanned_pdf_of_the_corpus_is_read_by_ocr(corpus_dir: Path, tmp_path: Path) -> None:
    path = corpus_dir / "pdf-scanned-image-only.pdf"
    if not path.exists():
        pytest.skip(f"the shared corpus is not at {corpus_dir}")
    summary, blocks = extract(path, tmp_path, ocr_languages="eng")
    assert summary.pages == 1 and summary.metadata["ocr_pages"] == "1"
    assert len(blocks) >= 5, "five lorem-ipsum paragraphs"
    assert words(blocks).startswith("lorem ipsum dolor sit amet, consectetur adipiscing elit.")
    assert all(b.page == 1 and b.meta and b.meta["ocr"] is True for b in blocks)
    assert all(50 < b.meta["ocr_confidence"] <= 100 for b in blocks if b.meta)  # type: ignore[operator]


@needs_tesseract
def test_pages_with_a_text_layer_are_not_ocrd(corpus_dir: Path, tmp_path: Path) -> None:
    path = corpus_dir / "pdf-with-blank-pages-4p.pdf"
    if not path.exists():
        pytest.skip(f"the shared corpus is not at {corpus_dir}")
    summary, blocks = extract(path, tmp_path, tesseract_cmd="/nonexistent/tesseract")
    assert {b.page for b in blocks} == {1, 4} and not any(b.meta for b in blocks)
    # The blank pages 2-3 hold no image, so OCR has nothing to read there either.
    assert "ocr_pages" not in summary.metadata


@needs_tesseract
def test_image_uploads_png_jpeg_and_tiff_are_read(tmp_path: Path) -> None:
    _, blocks = extract(DATA / "photo-eas-test.jpg", tmp_path)  # the default languages: chi_sim+chi_tra+eng
    assert "this is a test of the national emergency alert system" in words(blocks)
    assert all(b.meta == {"ocr": True, "ocr_confidence": b.meta["ocr_confidence"]} for b in blocks if b.meta)
    _, blocks = extract(DATA / "alphabet.png", tmp_path, ocr_languages="eng")
    assert "abcdefghijkl" in words(blocks).replace(" ", "")
    from PIL import Image

    tiff = tmp_path.parent / f"{tmp_path.name}-alphabet.tiff"
    Image.open(DATA / "alphabet.png").save(tiff, format="TIFF")
    summary, blocks = extract(tiff, tmp_path, ocr_languages="eng")
    assert summary.content_type == "image" and summary.pages == 1
    assert "abcdefghijkl" in words(blocks).replace(" ", "")


def test_missing_tesseract_fails_in_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(MissingTool) as failure:
        extract(DATA / "alphabet.png", tmp_path, tesseract_cmd="/nonexistent/tesseract")
    message = str(failure.value)
    assert "\n" not in message and "'/nonexistent/tesseract'" in message and "apt-get install tesseract-ocr" in message


@needs_tesseract
def test_unknown_ocr_language_names_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(MissingTool, match="language data for 'xyz' is not installed"):
        extract(DATA / "alphabet.png", tmp_path, ocr_languages="xyz")
    with pytest.raises(DocumentError, match="not Tesseract codes"):
        extract(DATA / "alphabet.png", tmp_path, ocr_languages="eng; rm -rf /")


def test_ocr_turned_off_refuses_images_clearly(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match="OCR is turned off"):
        extract(DATA / "alphabet.png", tmp_path, ocr_enabled=False)


def test_an_image_with_a_document_name_is_a_mismatch(tmp_path: Path) -> None:
    misnamed = tmp_path.parent / f"{tmp_path.name}-report.docx"
    shutil.copy(DATA / "alphabet.png", misnamed)
    with pytest.raises(ContentMismatch, match="named .docx but its content is a PNG image"):
        extract(misnamed, tmp_path)


@needs_antiword
def test_a_word_97_document_is_read(tmp_path: Path) -> None:
    summary, blocks = extract(DATA / "word97-hipster.doc", tmp_path)
    assert summary.content_type == "doc" and summary.characters > 2000
    assert blocks[0].text == ("I love word documents. They are lovely. They make me so happy I could smile. "
                              "And that is why I wrote this package."), "a paragraph is one block, unwrapped"
    assert "Sample text is hard. That is where http://hipsum.co comes in handy." in [b.text for b in blocks]


@needs_antiword
def test_a_word_97_document_is_found_by_its_content_whatever_its_name(tmp_path: Path) -> None:
    renamed = tmp_path.parent / f"{tmp_path.name}-notes"
    shutil.copy(DATA / "word97-hipster.doc", renamed)
    summary, _ = extract(renamed, tmp_path)
    assert summary.content_type == "doc"


def test_corrupt_doc_files_fail_clearly(tmp_path: Path) -> None:
    data = (DATA / "word97-hipster.doc").read_bytes()
    truncated = tmp_path.parent / f"{tmp_path.name}-truncated.doc"
    truncated.write_bytes(data[:3000])
    with pytest.raises(CorruptFile, match="Word 97-2003 document.*damaged or truncated"):
        extract(truncated, tmp_path)


@needs_antiword
def test_a_doc_whose_word_stream_is_garbage_fails_clearly(tmp_path: Path) -> None:
    data = (DATA / "word97-hipster.doc").read_bytes()
    # A sound container whose WordDocument stream is garbage: antiword refuses it.
    broken = bytearray(data)
    broken[512:1536] = bytes(1024)  # the sector holding the stream's header (FIB)
    damaged = tmp_path.parent / f"{tmp_path.name}-damaged.doc"
    damaged.write_bytes(bytes(broken))
    with pytest.raises(CorruptFile, match="damaged"):
        extract(damaged, tmp_path)


def test_missing_antiword_fails_in_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(MissingTool) as failure:
        extract(DATA / "word97-hipster.doc", tmp_path, antiword_cmd="/nonexistent/antiword")
    assert "\n" not in str(failure.value) and "apt-get install antiword" in str(failure.value)
