"""API keys in PostgreSQL: create, list, revoke (the `taskmgr keys` verbs), and
the lookup the api does to verify a presented key."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.models import api_keys
from shared.messages import utcnow
from shared.security.api_keys import (
    NewKey,
    Principal,
    Scope,
    generate_key,
    parse_key,
    secret_matches,
)


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    name: str
    scopes: tuple[str, ...]
    kb_ids: tuple[str, ...] | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def is_active(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def principal(self) -> Principal:
        return Principal(
            owner=f"key:{self.key_id}",
            name=self.name,
            scopes=frozenset(Scope(s) for s in self.scopes if s in Scope.__members__.values()),
            kb_ids=frozenset(self.kb_ids) if self.kb_ids is not None else None,
        )


class ApiKeyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self, name: str, scopes: Iterable[Scope], *, kb_ids: Iterable[str] | None = None,
        expires_in: timedelta | None = None, key: NewKey | None = None,
    ) -> tuple[NewKey, KeyRecord]:
        """Store a new key: a generated one, or `key` (an operator-chosen token)."""
        scopes = sorted(set(scopes))
        kbs = sorted(set(kb_ids)) if kb_ids is not None else None
        if Scope.ADMIN in scopes and kbs is not None:
            raise ValueError("an admin key acts on the whole fleet; it cannot be restricted to knowledge bases")
        key = key or generate_key()
        now = utcnow()
        async with self._engine.begin() as conn:
            await conn.execute(api_keys.insert().values(
                id=key.key_id, name=name, secret_sha256=key.secret_sha256, scopes=scopes, kb_ids=kbs,
                created_at=now, expires_at=now + expires_in if expires_in else None,
            ))
        record = await self.get(key.key_id)
        assert record is not None
        return key, record

    async def get(self, key_id: str) -> KeyRecord | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return _record(row._mapping) if row else None

    async def list(self) -> list[KeyRecord]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(api_keys).order_by(api_keys.c.created_at))
            return [_record(r._mapping) for r in rows]

    async def revoke(self, key_id: str) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=func.now())
            )
        return bool(result.rowcount)

    async def count_active(self) -> int:
        async with self._engine.connect() as conn:
            return int((await conn.execute(
                select(func.count()).select_from(api_keys).where(
                    api_keys.c.revoked_at.is_(None),
                    (api_keys.c.expires_at.is_(None)) | (api_keys.c.expires_at > func.now()),
                )
            )).scalar_one())

    async def verify(self, token: str) -> KeyRecord | None:
        """The record of an active key whose secret matches; None otherwise."""
        parsed = parse_key(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        async with self._engine.connect() as conn:
            row = (await conn.execute(
                select(api_keys).where(api_keys.c.id == key_id)
            )).first()
        if row is None or not secret_matches(secret, row.secret_sha256):
            return None
        record = _record(row._mapping)
        return record if record.is_active(utcnow()) else None

    async def touch(self, key_id: str) -> None:
        """Record use (at most about once a minute per key: see the caller)."""
        async with self._engine.begin() as conn:
            await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=func.now()))


def _record(row: object) -> KeyRecord:
    m = row  # a RowMapping
    return KeyRecord(
        key_id=m["id"], name=m["name"], scopes=tuple(m["scopes"]),  # type: ignore[index]
        kb_ids=tuple(m["kb_ids"]) if m["kb_ids"] is not None else None,  # type: ignore[index]
        created_at=m["created_at"], expires_at=m["expires_at"],  # type: ignore[index]
        revoked_at=m["revoked_at"], last_used_at=m["last_used_at"],  # type: ignore[index]
    )
