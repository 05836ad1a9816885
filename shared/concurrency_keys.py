"""Concurrency keys (decision 0160): at most `max_concurrency` task runs of one key
between their release and their terminal state, across every worker and replica.

A slot is a row in `concurrency_slots`, held by a task run from the moment its
message may be published until the dispatcher commits its terminal state; a
task over its key's limit waits (status `queued`) in `concurrency_waiting` with
the message it will publish, and is moved to the `task_releases` outbox, with
its slot, in the transaction that frees one. The broker never sees a task that
has no slot, so nothing is polled or redelivered while a key is full.

Decisions about one key are serialised by a transaction-scoped advisory lock on
the key, taken after the task rows involved and in sorted key order (the state
writer locks rows, then keys; so does everyone else here), so they cannot
deadlock. Used by the api (admission) and the dispatcher (releases, ends).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.status import Priority

# The largest max_concurrency a task may ask for; also how far down a key's queue one grant looks.
MAX_CONCURRENCY = 1000
# Lock ids of this feature live apart from the unique keys' (decision 0090).
_LOCK_SPACE = 160
# Scoped keys: "<owner>\x1f<key>" for a client's key, "\x1f<key>" for a task type's default
# (a document's), which no client can name: client keys are visible ASCII and owners non-empty.
SEPARATOR = "\x1f"
_PRIORITY_RANK = {Priority.HIGH: 2, Priority.NORMAL: 1, Priority.LOW: 0}

Outcome = Literal["granted", "waiting", "refused"]


def scoped_key(owner: str | None, key: str) -> str:
    """The key slots are counted on: a client's keys are its own (like unique keys);
    a task type's default key (owner None) is shared by every client."""
    return f"{owner or ''}{SEPARATOR}{key}"


def visible_key(scoped: str | None) -> str | None:
    """The key as the client named it (or the task type's default)."""
    return scoped.split(SEPARATOR, 1)[-1] if scoped is not None else None


def priority_rank(priority: str) -> int:
    return _PRIORITY_RANK[Priority(priority)]


@dataclass(frozen=True)
class Keyed:
    """A task about to be published that needs a slot of `key`."""

    task_id: str
    run: int
    key: str
    max_concurrency: int
    priority: int
    message: dict[str, Any]  # published when a slot is granted
    can_wait: bool = True  # False: refused instead of stored (its message holds a secret)
    fair_kb: str | None = None  # set for a stage's fair window: waiters are granted round-robin by kb (0161)


def fair_window_key(stage: str) -> str:
    """The system key of a first stage's fair window (decision 0161); no client can name it."""
    return scoped_key(None, f"fair:{stage}")


_LOCK_KEYS = text(f"""
SELECT count(pg_advisory_xact_lock({_LOCK_SPACE}, hashtext(k)))
FROM (SELECT k FROM unnest(CAST(:keys AS text[])) AS k ORDER BY k) AS ordered
""")

_LOCK_TASKS = text("""
SELECT count(*) FROM (SELECT id FROM tasks WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR NO KEY UPDATE) AS l
""")

# A task already holding its slot (a release of a granted task) goes on; otherwise it takes
# a slot when its key has room and no earlier task waits for it, else it waits (or is refused).
_TAKE = text("""
WITH e AS (
    SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS e(
        task_id uuid, run int, key text, max_concurrency int, priority int, ord int, message jsonb, can_wait bool,
        fair_kb text)
), holding AS (
    SELECT e.task_id FROM e JOIN concurrency_slots s ON s.task_id = e.task_id AND s.run = e.run
), held AS (
    SELECT s.key, count(*) AS n FROM concurrency_slots s WHERE s.key IN (SELECT key FROM e) GROUP BY s.key
), queued AS (  -- one index probe per key, not a read of its whole line (a fair window's may be long)
    SELECT k.key FROM (SELECT DISTINCT key FROM e) AS k
    WHERE EXISTS (SELECT 1 FROM concurrency_waiting w WHERE w.key = k.key)
), ranked AS (
    SELECT e.*, row_number() OVER (PARTITION BY e.key ORDER BY e.ord) AS rn
    FROM e WHERE e.task_id NOT IN (SELECT task_id FROM holding)
), decided AS (
    SELECT r.*, CASE
        WHEN r.key NOT IN (SELECT key FROM queued) AND COALESCE(h.n, 0) + r.rn <= r.max_concurrency THEN 'granted'
        WHEN r.can_wait THEN 'waiting' ELSE 'refused' END AS outcome
    FROM ranked r LEFT JOIN held h ON h.key = r.key
), slots AS (
    INSERT INTO concurrency_slots (task_id, run, key)
    SELECT task_id, run, key FROM decided WHERE outcome = 'granted'
    ON CONFLICT (task_id) DO UPDATE SET run = EXCLUDED.run, key = EXCLUDED.key, acquired_at = now()
), fair AS (
    -- A fair window's waiter joins its kb's line one round after the kb's last waiter, or, for a kb
    -- with none, at the round being granted now: one task of each kb per round (decision 0161).
    SELECT d.task_id, GREATEST(
        COALESCE((SELECT max(w.fair_rank) FROM concurrency_waiting w WHERE w.key = d.key AND w.kb_id = d.fair_kb), 0),
        COALESCE((SELECT w.fair_rank - 1 FROM concurrency_waiting w WHERE w.key = d.key
                  ORDER BY w.priority DESC, w.fair_rank, w.seq LIMIT 1), 0)
    ) + row_number() OVER (PARTITION BY d.key, d.fair_kb ORDER BY d.ord) AS fair_rank
    FROM decided d WHERE d.outcome = 'waiting' AND d.fair_kb IS NOT NULL
), waits AS (
    INSERT INTO concurrency_waiting (task_id, run, key, max_concurrency, priority, message, kb_id, fair_rank)
    SELECT d.task_id, d.run, d.key, d.max_concurrency, d.priority, d.message, d.fair_kb, COALESCE(f.fair_rank, 0)
    FROM decided d LEFT JOIN fair f ON f.task_id = d.task_id WHERE d.outcome = 'waiting' ORDER BY d.ord
    ON CONFLICT (task_id) DO NOTHING
)
SELECT CAST(task_id AS text) AS task_id, outcome FROM decided
UNION ALL SELECT CAST(task_id AS text), 'granted' FROM holding
""").bindparams(bindparam("rows", type_=JSONB))

# The next waiting tasks of each key, as many as its free slots (priority, then round: 0 except
# for a fair window, whose rounds take one task of each kb; then arrival): a slot each, and their
# messages into the release outbox (published by the dispatcher's ReleasePublisher).
_GRANT = text(f"""
WITH held AS (
    SELECT key, count(*) AS n FROM concurrency_slots WHERE key = ANY(CAST(:keys AS text[])) GROUP BY key
), next AS (
    -- Only as far down the line as the head's free slots: a fair window's line is the backlog.
    SELECT w.*, row_number() OVER (PARTITION BY w.key ORDER BY w.priority DESC, w.fair_rank, w.seq) AS rn
    FROM unnest(CAST(:keys AS text[])) AS k(key)
    CROSS JOIN LATERAL (
        SELECT c.task_id, c.key, c.max_concurrency, c.priority, c.fair_rank, c.seq
        FROM concurrency_waiting c WHERE c.key = k.key ORDER BY c.priority DESC, c.fair_rank, c.seq
        LIMIT GREATEST(LEAST({MAX_CONCURRENCY}, (
            SELECT h.max_concurrency FROM concurrency_waiting h WHERE h.key = k.key
            ORDER BY h.priority DESC, h.fair_rank, h.seq LIMIT 1)) - (
            SELECT count(*) FROM concurrency_slots s WHERE s.key = k.key), 0)) AS w
), pick AS (
    SELECT n.task_id FROM next n LEFT JOIN held h ON h.key = n.key WHERE COALESCE(h.n, 0) + n.rn <= n.max_concurrency
), gone AS (
    DELETE FROM concurrency_waiting c USING pick WHERE c.task_id = pick.task_id
    RETURNING c.task_id, c.run, c.key, c.message
), slots AS (
    INSERT INTO concurrency_slots (task_id, run, key) SELECT task_id, run, key FROM gone
    ON CONFLICT (task_id) DO NOTHING
)
INSERT INTO task_releases (task_id, message) SELECT task_id, message FROM gone
ON CONFLICT DO NOTHING
RETURNING CAST(task_id AS text) AS task_id
""")

# Ended runs (and runs that ended while waiting, e.g. cancelled) give their places back.
_FREE = text("""
WITH s AS (DELETE FROM concurrency_slots WHERE task_id = ANY(CAST(:ids AS uuid[])) RETURNING key),
     w AS (DELETE FROM concurrency_waiting WHERE task_id = ANY(CAST(:ids AS uuid[])) RETURNING key)
SELECT key FROM s UNION SELECT key FROM w
""")

# The safety net (run when the release outbox is idle): slots whose run ended or was replaced
# without the end reaching `free` (a hand replay resets a row's run), and keys whose waiters
# have room (a slot taken by a publish the broker refused). Neither happens on the normal path.
_ORPHANS = text("""
DELETE FROM concurrency_slots s USING tasks t
WHERE t.id = s.task_id AND (t.status IN ('completed', 'failed', 'cancelled') OR t.run <> s.run)
RETURNING s.key
""")

# Each key with waiters once (an index skip scan: a fair window's line may be the whole backlog),
# with room by its head's limit.
_ROOMY = text("""
WITH RECURSIVE keys AS (
    (SELECT key FROM concurrency_waiting ORDER BY key LIMIT 1)
    UNION ALL
    SELECT (SELECT w.key FROM concurrency_waiting w WHERE w.key > keys.key ORDER BY w.key LIMIT 1)
    FROM keys WHERE keys.key IS NOT NULL
)
SELECT k.key FROM keys k
WHERE k.key IS NOT NULL AND (SELECT count(*) FROM concurrency_slots s WHERE s.key = k.key) < (
    SELECT h.max_concurrency FROM concurrency_waiting h WHERE h.key = k.key
    ORDER BY h.priority DESC, h.fair_rank, h.seq LIMIT 1)
""")


async def lock_keys(conn: AsyncConnection, keys: Iterable[str]) -> None:
    """Hold each key's lock until the transaction ends, taken in sorted order."""
    distinct = sorted(set(keys))
    if distinct:
        await conn.execute(_LOCK_KEYS, {"keys": distinct})


async def take(conn: AsyncConnection, entries: Sequence[Keyed]) -> dict[str, Outcome]:
    """Decide for each entry, in order: `granted` (publish it now; it holds a slot),
    `waiting` (stored; released when a slot frees) or `refused` (full, and it may not wait)."""
    if not entries:
        return {}
    await conn.execute(_LOCK_TASKS, {"ids": sorted({e.task_id for e in entries})})
    await lock_keys(conn, (e.key for e in entries))
    rows = [{"task_id": e.task_id, "run": e.run, "key": e.key, "max_concurrency": e.max_concurrency,
             "priority": e.priority, "ord": i, "message": e.message, "can_wait": e.can_wait, "fair_kb": e.fair_kb}
            for i, e in enumerate(entries)]
    return {r.task_id: r.outcome for r in await conn.execute(_TAKE, {"rows": rows})}


async def grant(conn: AsyncConnection, keys: Iterable[str]) -> list[str]:
    """Give free slots of `keys` to their next waiting tasks (keys already locked by the caller)."""
    distinct = sorted(set(keys))
    if not distinct:
        return []
    return [r.task_id for r in await conn.execute(_GRANT, {"keys": distinct})]


async def free(conn: AsyncConnection, task_ids: Sequence[str]) -> list[str]:
    """Free the slots (and waiting places) of tasks that ended, and grant them on;
    answers the task ids released into the outbox. The caller holds the tasks' rows."""
    if not task_ids:
        return []
    keys = [r.key for r in await conn.execute(_FREE, {"ids": list(task_ids)})]
    if not keys:
        return []
    await lock_keys(conn, keys)
    return await grant(conn, keys)


async def repair(conn: AsyncConnection) -> list[str]:
    """The safety net's pass: free orphaned slots, grant keys with room."""
    keys = [r.key for r in await conn.execute(_ORPHANS)]
    keys += [r.key for r in await conn.execute(_ROOMY)]
    if not keys:
        return []
    await lock_keys(conn, keys)
    return await grant(conn, keys)
