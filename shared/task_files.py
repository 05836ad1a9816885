"""How a task handler reads the file its payload names, safely: `file_ref` (an
upload in the upload store) or `file_path` (resolved inside UPLOAD_ROOTS,
symlinks followed then checked, opened without following a final symlink).
Every refusal is a `FileAccessError`, a permanent failure with a clear reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from shared.file_access import FileAccessError, open_checked, resolve_within_roots
from shared.settings import FileSettings
from shared.uploads import UploadStore


class TaskFiles:
    def __init__(self, roots: Sequence[Path], store: UploadStore, *, max_bytes: int) -> None:
        self._roots = list(roots)
        self._store = store
        self._max_bytes = max_bytes

    @classmethod
    def from_settings(cls, settings: FileSettings) -> TaskFiles:
        return cls(settings.upload_roots, UploadStore(settings.upload_store_root), max_bytes=settings.max_file_bytes)

    def open(self, *, file_ref: str | None = None, file_path: str | None = None) -> BinaryIO:
        """Open the one file named; blocking (call it off the event loop)."""
        if (file_ref is None) == (file_path is None):
            raise FileAccessError("name exactly one of file_ref and file_path")
        if file_ref is not None:
            # The store lives inside the first root: the same checks apply to it.
            real = resolve_within_roots(str(self._store.path_for(file_ref)), self._roots)
        else:
            assert file_path is not None
            real = resolve_within_roots(file_path, self._roots, store=self._store.root)
        return open_checked(real, max_bytes=self._max_bytes)
