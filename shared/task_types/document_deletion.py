"""`document_deletion`: removes a document and all its chunks from a knowledge base.

Runs on the `store` stage, under the same per-document lock and ordering as
the writes of `document_processing` (see docs/decisions/0012), so a deletion
and a re-processing of the same document never interleave. Submitted by
`DELETE /api/v1/kbs/{kb_id}/documents/{document_id}` or like any task.
"""

from __future__ import annotations

from pydantic import Field

from shared.task_types.base import Payload, TaskType
from shared.task_types.document_processing import DOCUMENT_ID_PATTERN, document_key


class DocumentDeletionPayload(Payload):
    document_id: str = Field(pattern=DOCUMENT_ID_PATTERN)


TASK_TYPE = TaskType(
    name="document_deletion",
    payload_model=DocumentDeletionPayload,
    description="Deletes a document's chunks from the knowledge base (atomically; ordered with its re-processing).",
    stages=("store",),
    requires_kb_id=True,
    default_concurrency_key=lambda payload, kb_id: document_key(kb_id, payload),
)
