"""Legacy Word (.doc, Word 97-2003): text through antiword.

antiword is small, packaged by Debian and reads the Word 97 piece table
(Unicode pieces included, so Chinese text survives) without an office
suite. It gets a private copy of the file; `-w 0` keeps each paragraph on one
line, so paragraphs are the blank-line separated runs of its output.
A file antiword refuses is reported as damaged, an encrypted one as needing
its password removed.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import IO

from services.worker.documents.blocks import Block, DocumentInfo
from services.worker.documents.errors import CorruptFile, PasswordRequired
from services.worker.documents.tools import copy_to_temp, find_tool, run_tool

TIMEOUT_SECONDS = 300


def parse_doc(handle: IO[bytes], info: DocumentInfo, *, command: str, work_dir: str) -> Iterator[Block]:
    executable = find_tool(command, "reading a legacy Word (.doc) document", "antiword")
    copy = copy_to_temp(handle, work_dir, ".doc")
    try:
        done = run_tool([executable, "-w", "0", "-m", "UTF-8.txt", copy], timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise CorruptFile(f"antiword did not finish reading the .doc within {TIMEOUT_SECONDS} s") from None
    finally:
        os.unlink(copy)
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").replace(copy, "the file").strip()
        if "ncrypt" in reason:
            raise PasswordRequired("the Word document is password-protected; remove the password and upload it again")
        raise CorruptFile(f"the Word 97-2003 document is damaged and cannot be read ({reason[:200] or 'antiword failed'})")
    text = done.stdout.decode("utf-8", "replace")
    for paragraph in text.split("\n\n"):
        if paragraph.strip():
            yield Block(paragraph.strip("\n"))
