"""`high` tasks overtake a backlog of `low` ones."""

from __future__ import annotations

import asyncio

from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.support.fleet import one_slot


async def test_high_priority_tasks_finish_before_a_low_priority_backlog(fleet_factory: FleetFactory, http) -> None:  # type: ignore[no-untyped-def]
    fleet = await fleet_factory(one_slot)
    api = ApiClient(fleet.api_url, http)
    low = [(await api.submit({"task_type": "sleep", "priority": "low", "payload": {"seconds": 0.05}}))["task_id"]
           for _ in range(40)]
    high = [(await api.submit({"task_type": "sleep", "priority": "high", "payload": {"seconds": 0.05}}))["task_id"]
            for _ in range(5)]
    tasks = await asyncio.gather(*(api.wait_for(t, timeout=60) for t in low + high))
    order = [t["task_id"] for t in sorted(tasks, key=lambda t: t["finished_at"])]
    high_positions = [order.index(t) for t in high]
    lows_after_last_high = len(order) - 1 - max(high_positions)
    # The worker holds one message; a few lows may finish first while highs are submitted.
    assert lows_after_last_high >= 25, (high_positions, order.index(low[-1]))
    assert sum(high_positions) / len(high) < sum(order.index(t) for t in low) / len(low)
