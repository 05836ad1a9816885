"""Reading the files tasks name, safely.

A `file_path` must resolve (symlinks followed, then checked) inside one of
`UPLOAD_ROOTS`; `..`, NUL bytes and paths escaping the roots are refused with
a permanent error. The file is then opened with O_NOFOLLOW, so a symlink
swapped in after the check is refused rather than followed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from shared.errors import Permanent


class FileAccessError(Permanent):
    code = "file_access_error"


def check_path_syntax(raw: str, roots: Sequence[Path], *, store: Path | None = None) -> None:
    """What can be told about a `file_path` without touching the filesystem (the
    api's submit-time check; the worker resolves symlinks when it reads).
    Paths into the upload `store` are refused: an upload is named by its
    `file_ref`, whose kb is checked, never by its path."""
    if "\x00" in raw:
        raise FileAccessError("file_path contains a NUL byte")
    if not raw.strip():
        raise FileAccessError("file_path is empty")
    candidate = Path(raw)
    if ".." in candidate.parts:
        raise FileAccessError("file_path must not contain '..'")
    if candidate.is_absolute() and not any(candidate.is_relative_to(root) for root in roots):
        # The roots are not named: an error must not reveal the server's layout.
        raise FileAccessError(f"file {raw!r} is outside the allowed upload roots (UPLOAD_ROOTS)")
    if store is not None and _in_store(candidate if candidate.is_absolute() else roots[0] / candidate, store):
        raise FileAccessError(_INTO_STORE.format(raw=raw))


def resolve_within_roots(raw: str, roots: Sequence[Path], *, store: Path | None = None) -> Path:
    """The real path of `raw` if it lies inside a root (and, with `store`, not
    inside the upload store, symlinks followed); relative paths are taken from
    the first root."""
    check_path_syntax(raw, roots, store=store)
    candidate = Path(raw)
    if not candidate.is_absolute():
        candidate = roots[0] / candidate
    try:
        real = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise FileAccessError(f"file {raw!r} does not exist") from None
    except (OSError, RuntimeError) as exc:  # symlink loops, permission errors
        reason = getattr(exc, "strerror", None) or type(exc).__name__  # the message would show the real path
        raise FileAccessError(f"file {raw!r} cannot be resolved: {reason}") from None
    if not any(real.is_relative_to(root) for root in roots):
        raise FileAccessError(f"file {raw!r} is outside the allowed upload roots (UPLOAD_ROOTS)")
    if store is not None and _in_store(real, store.resolve()):
        raise FileAccessError(_INTO_STORE.format(raw=raw))
    return real


_INTO_STORE = "file {raw!r} is inside the upload store; name an upload by payload.file_ref, not by its path"


def _in_store(path: Path, store: Path) -> bool:
    return Path(os.path.normpath(path)).is_relative_to(store)


def open_checked(real: Path, *, max_bytes: int) -> BinaryIO:
    """Open a path returned by `resolve_within_roots`: no final symlink, a
    regular file, within the size limit. O_NONBLOCK, so a FIFO or a device
    swapped in is refused at once instead of holding a thread in open(2);
    on a regular file the flag changes nothing."""
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise FileAccessError(f"file {real.name!r} cannot be opened: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise FileAccessError(f"{real.name!r} is not a regular file")
    if info.st_size > max_bytes:
        os.close(fd)
        raise FileAccessError(f"file is {info.st_size} bytes; the limit is {max_bytes} (MAX_FILE_BYTES)")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")
