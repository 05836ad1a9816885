"""A flood of unknown API keys cannot load the database: a repeated bad key is
remembered as unknown, and each address pays for lookups that find no key
(429 when its bucket is spent); a valid key is never charged."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import make_mocked_request

from services.api.auth import Authenticator
from services.api.rate_limit import TokenBuckets
from shared.db.engine import create_engine
from shared.errors import RateLimited, Unauthorized
from shared.security.api_key_store import ApiKeyStore, KeyRecord
from shared.security.api_keys import Scope, generate_key
from tests.support.environment import TestEnvironment


class CountingStore(ApiKeyStore):
    """The real store, counting the lookups that reach the database."""

    lookups = 0

    async def verify(self, token: str) -> KeyRecord | None:
        self.lookups += 1
        return await super().verify(token)


@pytest.fixture
async def store(environment: TestEnvironment) -> AsyncIterator[CountingStore]:
    engine = create_engine(environment.postgres, database=environment.database, pool_size=1)
    yield CountingStore(engine)
    await engine.dispose()


def _request(token: str):  # type: ignore[no-untyped-def]
    return make_mocked_request("GET", "/api/v1/tasks", headers={"Authorization": f"Bearer {token}"})


async def test_random_keys_stop_reaching_the_database_once_the_address_bucket_is_spent(
    store: CountingStore,
) -> None:
    auth = Authenticator(store, required=True, cache_seconds=5, metrics_token=None,
                         lookups=TokenBuckets(rate=0.001, burst=5))
    valid, _ = await store.create(f"ok-{uuid.uuid4().hex[:6]}", [Scope.TASKS_READ])
    assert (await auth.principal(_request(valid.token))).name.startswith("ok-")  # a valid key is not charged

    answers = []
    for _ in range(50):
        try:
            await auth.principal(_request(generate_key().token))
        except (Unauthorized, RateLimited) as exc:
            answers.append(type(exc))
    assert answers[:5] == [Unauthorized] * 5 and set(answers[5:]) == {RateLimited}
    assert store.lookups == 1 + 5

    # The valid key, cached, still works from the same address.
    assert (await auth.principal(_request(valid.token))).name.startswith("ok-")


async def test_a_repeated_unknown_key_is_looked_up_once(store: CountingStore) -> None:
    auth = Authenticator(store, required=True, cache_seconds=60, metrics_token=None,
                         lookups=TokenBuckets(rate=0.001, burst=100))
    bad = generate_key().token
    for _ in range(20):
        with pytest.raises(Unauthorized):
            await auth.principal(_request(bad))
    assert store.lookups == 1
