"""The cost of the dependency machinery on plain tasks (no `depends_on`).

For a plain task the machinery lives in one place: the dispatcher's write of
a batch that ends tasks, which now runs in a transaction with the dependency
settlement (an indexed `task_edges` lookup) and the workflow lookup after the
upsert (docs/decisions/0100, 0101). Admission of a plain task is unchanged
(one `if`). This measures that write both ways on the same kind of batches of
`completed` deltas for plain tasks, in alternating rounds so both share the
machine's noise:

- before: the upsert alone, one autocommit statement (the writer as it was);
- after: `TaskStateWriter.apply` as the dispatcher runs it now.

    .venv/bin/python -m bench.dependency_overhead [--tasks 10000] [--batches 500,50,1]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import timedelta

from sqlalchemy import text

from bench.environment import create_environment, destroy_environment
from services.dispatcher.state_fold import fold
from services.dispatcher.state_writer import _UPSERT, TaskStateWriter, _record
from shared.db.engine import create_engine
from shared.ids import new_task_id
from shared.messages import TaskCompleted, utcnow

_INSERT = text("""
INSERT INTO tasks (id, task_type, retry_limit, status, stage, created_at, updated_at)
SELECT CAST(unnest(CAST(:ids AS text[])) AS uuid), 'benchmark', 0, 'queued', 'default', now(), now()
""")


def _completions(ids: list[str]) -> list[TaskCompleted]:
    at = utcnow()
    return [TaskCompleted(task_id=i, task_type="benchmark", result={"ok": True}, started_at=at - timedelta(seconds=0.01),
                          finished_at=at) for i in ids]


async def measure(tasks: int, batch: int) -> tuple[float, float]:
    """Seconds per task (before, after) over `tasks` tasks each, in batches of `batch`."""
    env = await create_environment()
    engine = create_engine(env.postgres)
    try:
        writer = TaskStateWriter(engine, default_callback_url=None)
        autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        ids = {"before": [new_task_id() for _ in range(tasks)], "after": [new_task_id() for _ in range(tasks)]}
        async with engine.begin() as conn:
            for part in ids.values():
                await conn.execute(_INSERT, {"ids": part})
        spent = {"before": 0.0, "after": 0.0}
        for start in range(0, tasks, batch):
            for path in (("before", "after") if (start // batch) % 2 == 0 else ("after", "before")):
                deltas = fold(_completions(ids[path][start:start + batch]))
                began = time.perf_counter()
                if path == "before":
                    async with autocommit.connect() as conn:
                        await conn.execute(_UPSERT, {"batch": [_record(d) for d in deltas],
                                                     "default_callback_url": None})
                else:
                    await writer.apply(deltas)
                spent[path] += time.perf_counter() - began
        async with engine.connect() as conn:
            done = (await conn.execute(text("SELECT count(*) FROM tasks WHERE status = 'completed'"))).scalar_one()
        assert done == 2 * tasks, f"only {done} of {2 * tasks} completed"
        return spent["before"] / tasks, spent["after"] / tasks
    finally:
        await engine.dispose()
        await destroy_environment(env)


async def main(tasks: int, batches: list[int]) -> None:
    print(f"dispatcher write of plain-task completions, {tasks:,} tasks per path")
    print("| batch | before (µs/task) | after (µs/task) | added |")
    print("|---:|---:|---:|---:|")
    for batch in batches:
        before, after = await measure(tasks, batch)
        print(f"| {batch} | {before * 1e6:.0f} | {after * 1e6:.0f} | {(after / before - 1) * 100:+.0f}% |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--batches", default="500,50,1")
    args = parser.parse_args()
    asyncio.run(main(args.tasks, [int(b) for b in args.batches.split(",")]))
