"""The envelope of `POST /api/v1/tasks/batch` (`{"tasks": [...], "atomic": false}`)
as one pydantic model: the handler validates the envelope with it and the
OpenAPI document is generated from it. Its items are validated one by one
afterwards (each gets its own answer), so at run time an item is `Any` here and
in the document it is the task types' `BatchItem` models."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, create_model

from shared.errors import FieldError, InvalidRequest

ATOMIC_DESCRIPTION = "true: create all tasks or none."


class BatchEnvelope(BaseModel):
    """What the handler keeps of a valid envelope: the raw items and the mode."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: list[Any]
    atomic: StrictBool = Field(default=False, description=ATOMIC_DESCRIPTION)


def envelope_model(max_batch_size: int, item: Any = Any) -> type[BatchEnvelope]:
    """The envelope with its bounds (1..MAX_BATCH_SIZE items) and an item type: `Any` to
    validate a request, the task types' union to describe one."""
    return create_model(
        "BatchRequest", __base__=BatchEnvelope,
        tasks=(list[item], Field(min_length=1, max_length=max_batch_size, strict=True)),
    )


@functools.cache
def _request_model(max_batch_size: int) -> type[BatchEnvelope]:
    return envelope_model(max_batch_size)


def parse_envelope(body: Any, max_batch_size: int) -> BatchEnvelope:
    """`body` as an envelope, or the InvalidRequest the handler has always answered: the
    first of a bad shape, unknown fields, a non-boolean `atomic`, a size out of bounds."""
    try:
        return _request_model(max_batch_size).model_validate(body)
    except ValidationError as exc:
        raise _refusal(body, exc, max_batch_size) from None


def _refusal(body: Any, exc: ValidationError, limit: int) -> InvalidRequest:
    # The field of each error and its kind; None for the body itself (not an object).
    at = {str(e["loc"][0]) if e["loc"] else None: e["type"] for e in exc.errors(include_url=False)}
    if None in at or at.get("tasks") in ("missing", "list_type"):
        return InvalidRequest("send {\"tasks\": [...], \"atomic\": false}", [FieldError("tasks", "must be an array")])
    unknown = sorted(field for field, kind in at.items() if field is not None and kind == "extra_forbidden")
    if unknown:
        return InvalidRequest("unknown fields", [FieldError(k, "unknown field") for k in unknown])
    if "atomic" in at:
        return InvalidRequest("atomic must be a boolean", [FieldError("atomic", "must be true or false")])
    return InvalidRequest(f"a batch holds 1 to {limit} tasks",
                          [FieldError("tasks", f"holds {len(body['tasks'])} items; allowed 1..{limit}")])
