"""API keys for tests, made through the same store `taskmgr keys` uses."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from shared.db.engine import create_engine
from shared.security.api_key_store import ApiKeyStore
from shared.security.api_keys import Scope
from tests.support.environment import TestEnvironment


async def create_key(
    environment: TestEnvironment, name: str, scopes: Iterable[Scope], *, kb_ids: Iterable[str] | None = None,
    expires_in: timedelta | None = None,
) -> str:
    engine = create_engine(environment.postgres, pool_size=1)
    try:
        key, _ = await ApiKeyStore(engine).create(name, scopes, kb_ids=kb_ids, expires_in=expires_in)
        return key.token
    finally:
        await engine.dispose()


async def revoke_key(environment: TestEnvironment, token: str) -> None:
    engine = create_engine(environment.postgres, pool_size=1)
    try:
        await ApiKeyStore(engine).revoke(token.split("_")[1])
    finally:
        await engine.dispose()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
