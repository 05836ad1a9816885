"""`document_processing`: a file becomes searchable chunks in a knowledge base.

The payload is validated at submit time (a bad request is a 422 naming the
field); the file itself is checked by the `preprocess` stage, which may run on
another host. Every process imports this module, so it uses pydantic and the
standard library only.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from shared.fleet import PIPELINE_STAGES
from shared.task_types.base import Payload, RevealedSecret, TaskType

DOCUMENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$"
FILE_REF_PATTERN = r"^upl_[0-9a-f]{32}$"  # the same contract as shared.uploads

MIN_CHUNK_SIZE = 100
MAX_CHUNK_SIZE = 8000
DEFAULT_CHUNK_SIZE = 1000
DEFAULT_CHUNK_OVERLAP = 200


def document_key(kb_id: str | None, payload: Mapping[str, Any]) -> str:
    """The per-document concurrency key (decision 0160): two runs on one document never
    interleave. Named as the document is: its document_id, else its file_ref (the default
    document id of an upload); a file_path without document_id is keyed by its path."""
    name = payload.get("document_id") or payload.get("file_ref")
    if name is None:
        name = "path:" + posixpath.normpath(str(payload.get("file_path")))
    return f"document:{kb_id}:{name}"


class DocumentProcessingPayload(Payload):
    """What to ingest and how to cut it. Sizes are in characters (Unicode code points)."""

    file_path: str | None = Field(
        default=None, min_length=1, max_length=4096,
        description="A file under one of UPLOAD_ROOTS (absolute, or relative to the first root).",
    )
    file_ref: str | None = Field(
        default=None, pattern=FILE_REF_PATTERN, description="An upload reference (`upl_...`) instead of a path."
    )
    document_id: str | None = Field(
        default=None, pattern=DOCUMENT_ID_PATTERN,
        description="Stable id of the document in its KB; re-processing the same id replaces its chunks. "
        "Default: derived from the file path (or the file_ref).",
    )
    chunk_size: int = Field(default=DEFAULT_CHUNK_SIZE, ge=MIN_CHUNK_SIZE, le=MAX_CHUNK_SIZE)
    chunk_overlap: int = Field(default=DEFAULT_CHUNK_OVERLAP, ge=0)
    # Opens an encrypted PDF. Never logged, never returned, not stored in the task row.
    password: Annotated[SecretStr, RevealedSecret] | None = Field(default=None, min_length=1, max_length=1024)
    title: str | None = Field(default=None, min_length=1, max_length=500, description="Overrides the extracted title.")
    ocr_languages: str | None = Field(
        default=None, max_length=200, pattern=r"^[A-Za-z_]+(\+[A-Za-z_]+)*$",
        description="Tesseract language codes joined by '+' for scanned pages and images (e.g. 'eng' or "
        "'chi_tra+eng'). Default: the worker's OCR_LANGUAGES.",
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Copied onto the document and every chunk (your own ids, tags, ...)."
    )
    shard_pages: int | None = Field(
        default=None, ge=0, le=1_000_000,
        description="A PDF with more pages is parsed and embedded in page-range shards that every free worker "
        "of those stages takes. "
        "Default: the worker's SHARD_PAGES (50); 0 never shards.",
    )

    @field_validator("file_path")
    @classmethod
    def _plain_path(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if "\x00" in value:
            raise ValueError("must not contain a NUL byte")
        if not value.strip():
            raise ValueError("must not be blank")
        if ".." in PurePosixPath(value).parts:
            raise ValueError("must not contain '..'")
        return value

    @field_validator("chunk_overlap")
    @classmethod
    def _overlap_below_size(cls, value: int, info: ValidationInfo) -> int:
        size = info.data.get("chunk_size")
        if size is None:  # chunk_size itself is invalid and reported
            return value
        if value >= size:
            raise ValueError(f"must be smaller than chunk_size ({size})")
        if value > size // 2:
            raise ValueError(f"must be at most half of chunk_size ({size}); more overlap repeats most of every chunk")
        return value

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > 50 or len(repr(value)) > 8192:
            raise ValueError("must be at most 50 keys and 8 KiB")
        return value

    @model_validator(mode="after")
    def _exactly_one_source(self) -> DocumentProcessingPayload:
        if (self.file_path is None) == (self.file_ref is None):
            raise ValueError("give exactly one of file_path or file_ref")
        return self


TASK_TYPE = TaskType(
    name="document_processing",
    payload_model=DocumentProcessingPayload,
    description="Parses a file (PDF, DOCX, DOC, PPTX, XLSX, CSV, HTML, Markdown, TXT, JSON, EPUB; scanned "
    "PDF pages and PNG/JPEG/TIFF images through OCR), chunks it, embeds "
    "the chunks and stores them in the knowledge base, replacing the document's previous chunks.",
    stages=PIPELINE_STAGES,
    requires_kb_id=True,
    default_concurrency_key=lambda payload, kb_id: document_key(kb_id, payload),
)
