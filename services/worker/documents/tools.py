"""Command-line tools a parser runs (antiword, tesseract), from the parsing child.

The child already holds the checked file open; the tool gets a private copy
of its bytes in a temporary directory, never the user's path, so a symlink
swapped in after the check cannot redirect it. A missing tool is one clear
line naming the package to install, not a traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from typing import IO

from services.worker.documents.errors import MissingTool

# Why a tool may be absent, and what installs it (Debian/Ubuntu package names).
_PACKAGES = {
    "antiword": "antiword",
    "tesseract": "tesseract-ocr tesseract-ocr-eng tesseract-ocr-chi-sim tesseract-ocr-chi-tra",
}


def find_tool(command: str, purpose: str, tool: str) -> str:
    """The executable for `command`, or MissingTool saying what to install."""
    found = shutil.which(command)
    if found is None:
        raise MissingTool(
            f"{purpose} needs '{command}', which is not installed on this worker "
            f"(apt-get install {_PACKAGES[tool]})"
        )
    return found


def copy_to_temp(handle: IO[bytes], directory: str, suffix: str) -> str:
    fd, path = tempfile.mkstemp(dir=directory, suffix=suffix)
    with os.fdopen(fd, "wb") as out:
        handle.seek(0)
        shutil.copyfileobj(handle, out, 1 << 20)
    handle.seek(0)
    return path


def run_tool(argv: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[bytes]:
    """Run to completion; the timeout bounds a tool stuck on a hostile file even
    if the parsing child that started it has been killed."""
    # One OpenMP thread: the worker's CPU pool already runs one parse per core.
    return subprocess.run(list(argv), capture_output=True, timeout=timeout, check=False,
                          env={**os.environ, "OMP_THREAD_LIMIT": "1"})
