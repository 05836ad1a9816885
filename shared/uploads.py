"""Uploaded files, referenced by tasks as `payload.file_ref`.

An upload lives at `<first UPLOAD_ROOT>/.uploads/<file_ref>/content`, with its
metadata (original name, size, sha256, sniffed content type, created_at) in
`meta.json` beside it. The api writes uploads (`POST /api/v1/uploads`); the
pipeline reads them through `UploadStore.path_for`, so the KB service needs no
filesystem shared with the workers beyond this store.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

from shared.file_access import FileAccessError

FILE_REF_PATTERN = r"^upl_[0-9a-f]{32}$"
_FILE_REF = re.compile(FILE_REF_PATTERN)


def new_file_ref() -> str:
    return f"upl_{uuid.uuid4().hex}"


class UploadStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def directory(self, file_ref: str) -> Path:
        if not _FILE_REF.match(file_ref):
            raise FileAccessError(f"file_ref {file_ref!r} is not a valid upload reference")
        return self.root / file_ref

    def path_for(self, file_ref: str) -> Path:
        path = self.directory(file_ref) / "content"
        if not path.is_file():
            raise FileAccessError(f"upload {file_ref!r} does not exist (expired or never uploaded)")
        return path

    def meta(self, file_ref: str) -> dict[str, Any]:
        try:
            return json.loads((self.directory(file_ref) / "meta.json").read_text())  # type: ignore[no-any-return]
        except FileNotFoundError:
            raise FileAccessError(f"upload {file_ref!r} does not exist (expired or never uploaded)") from None
