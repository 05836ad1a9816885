"""Why a document cannot be processed, in words its owner understands.

All are permanent (retrying the same file cannot help). They cross the
process boundary of the CPU pool, so they take only a message.
"""

from __future__ import annotations

from shared.errors import Permanent


class DocumentError(Permanent):
    code = "document_error"


class EmptyDocument(DocumentError):
    code = "empty_document"


class NoTextLayer(DocumentError):
    code = "no_text_layer"


class PasswordRequired(DocumentError):
    code = "password_required"


class CorruptFile(DocumentError):
    code = "corrupt_file"


class UnsupportedFormat(DocumentError):
    code = "unsupported_format"


class ContentMismatch(DocumentError):
    code = "content_mismatch"


class DocumentTooLarge(DocumentError):
    code = "document_too_large"


class MissingTool(DocumentError):
    """A system tool this format needs (antiword, tesseract) is not installed on the worker."""

    code = "missing_tool"
