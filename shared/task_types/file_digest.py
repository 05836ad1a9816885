"""`file_digest`: reads the file a task names (an upload's `file_ref`, or a
`file_path` inside UPLOAD_ROOTS) and returns its size and SHA-256. The
smallest real consumer of safe file intake; a path outside the roots, `..`,
a NUL byte or an escaping symlink fails the task for good with the reason."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from shared.task_types.base import Payload, TaskContext, TaskType
from shared.uploads import FILE_REF_PATTERN

CHUNK = 1024 * 1024


class FileDigestPayload(Payload):
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"oneOf": [
        {"required": ["file_ref"], "properties": {"file_ref": {"type": "string"}}},
        {"required": ["file_path"], "properties": {"file_path": {"type": "string"}}},
    ]})

    file_ref: str | None = Field(default=None, pattern=FILE_REF_PATTERN, description="From POST /api/v1/uploads.")
    file_path: str | None = Field(default=None, min_length=1, max_length=4096,
                                  description="A path inside UPLOAD_ROOTS (relative to the first root, or absolute).")

    @model_validator(mode="after")
    def _exactly_one(self) -> FileDigestPayload:
        if (self.file_ref is None) == (self.file_path is None):
            raise ValueError("give exactly one of file_ref and file_path")
        return self


def _digest(ctx: TaskContext, payload: FileDigestPayload) -> dict[str, Any]:
    sha, size = hashlib.sha256(), 0
    with ctx.files.open(file_ref=payload.file_ref, file_path=payload.file_path) as handle:
        while chunk := handle.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": sha.hexdigest()}


async def run_file_digest(payload: FileDigestPayload, ctx: TaskContext) -> dict[str, Any]:
    return await asyncio.to_thread(_digest, ctx, payload)


TASK_TYPE = TaskType(
    name="file_digest",
    payload_model=FileDigestPayload,
    description="Size and SHA-256 of a file named by `file_ref` (an upload) or `file_path` (inside UPLOAD_ROOTS).",
    requires_kb_id=True,
    handler=run_file_digest,
)
