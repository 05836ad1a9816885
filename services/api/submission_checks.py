"""Checks a valid-looking task must pass before it is admitted, beyond its
schema: the caller may use its kb_id, its callback URL is allowed (SSRF), the
upload it names exists for the same kb, its `file_path` stays inside
UPLOAD_ROOTS, its `depends_on` parents exist and are visible to the caller.
REST, batch and `tm.submit` all come through here.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.dependencies import parent_problems
from shared.db.models import uploads
from shared.errors import FieldError, Forbidden, InvalidRequest, TaskManagerError
from shared.file_access import FileAccessError, check_path_syntax
from shared.security.api_keys import Principal
from shared.security.callback_policy import CallbackPolicy, CallbackRefused
from shared.task_request import ValidTask
from shared.uploads import FILE_REF_PATTERN

_FILE_REF = re.compile(FILE_REF_PATTERN)


class SubmissionChecks:
    def __init__(self, engine: AsyncEngine, policy: CallbackPolicy, upload_roots: Sequence[Path],
                 upload_store: Path | None = None) -> None:
        self._engine = engine
        self._store = upload_store
        self._policy = policy
        self._roots = list(upload_roots)

    async def check(self, valid: ValidTask, principal: Principal) -> None:
        [outcome] = await self.check_many([valid], principal)
        if outcome is not None:
            raise outcome

    async def check_many(self, items: Sequence[ValidTask], principal: Principal) -> list[TaskManagerError | None]:
        """One outcome per item (None: passed). Callback hosts are resolved once each,
        concurrently, and uploads are looked up in one query."""
        urls = {v.callback_url for v in items if v.callback_url}
        refused = dict(zip(urls, await asyncio.gather(*(self._check_url(u) for u in urls)), strict=True))
        refs = {ref for v in items if isinstance(ref := _file_fields(v).get("file_ref"), str)}
        upload_kbs = await self._upload_kbs(refs) if refs else {}
        parents = await parent_problems(self._engine, items, principal)

        outcomes: list[TaskManagerError | None] = []
        for valid, parent_errors in zip(items, parents, strict=True):
            kb_id = valid.request.kb_id
            if not principal.may_use_kb(kb_id):
                detail = (f"this API key may not use kb_id {kb_id!r}" if kb_id
                          else "this API key is restricted to knowledge bases: kb_id is required")
                outcomes.append(Forbidden(detail, [FieldError("kb_id", detail)]))
                continue
            errors: list[FieldError] = []
            if valid.callback_url and refused[valid.callback_url]:
                errors.append(FieldError("callback_url", refused[valid.callback_url] or ""))
            errors.extend(_file_errors(_file_fields(valid), kb_id, upload_kbs, self._roots, self._store))
            errors.extend(parent_errors)
            outcomes.append(InvalidRequest("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors)
                            if errors else None)
        return outcomes

    async def check_callback_url(self, url: str) -> str | None:
        """Why the callback policy refuses `url` (None: allowed)."""
        return await self._check_url(url)

    async def _check_url(self, url: str) -> str | None:
        try:
            await self._policy.check_resolved(url)
        except CallbackRefused as exc:
            return exc.message
        return None

    async def _upload_kbs(self, refs: set[str]) -> dict[str, str]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(uploads.c.file_ref, uploads.c.kb_id).where(uploads.c.file_ref.in_(refs)))
            return {r.file_ref: r.kb_id for r in rows}


def _file_fields(valid: ValidTask) -> dict[str, Any]:
    """`file_ref` / `file_path` of task types whose payload declares them (an
    `echo` payload that happens to carry such a key is just data)."""
    declared = valid.task_type.payload_model.model_fields
    return {k: valid.payload.get(k) for k in ("file_ref", "file_path") if k in declared}


def _file_errors(payload: dict[str, Any], kb_id: str | None, upload_kbs: dict[str, str],
                 roots: Sequence[Path], store: Path | None) -> list[FieldError]:
    errors = []
    ref = payload.get("file_ref")
    # Another kb's upload answers exactly like a missing one: its existence is not revealed.
    if isinstance(ref, str) and (not _FILE_REF.match(ref) or upload_kbs.get(ref) != kb_id):
        errors.append(FieldError("payload.file_ref", f"upload {ref!r} not found for kb_id {kb_id!r} "
                                     "(never uploaded, expired, or uploaded for another knowledge base)"))
    path = payload.get("file_path")
    if isinstance(path, str):
        try:
            check_path_syntax(path, roots, store=store)
        except FileAccessError as exc:
            errors.append(FieldError("payload.file_path", exc.message))
    return errors
