"""The pure parts of `make chaos-cluster` (the soak itself runs on demand, about
5 minutes: too long for the suite)."""

from __future__ import annotations

from collections import Counter

from tests.chaos import slowest_task_seconds
from tests.chaos_cluster import fault_order, queue_homes


def test_the_node_holding_most_queues_is_killed_first() -> None:
    output = ("tm.stage.default\t<tm_cl_1@localhost.1700000000.712.0>\n"
              "tm.stage.index\t<tm_cl_2@localhost.1.9.0>\ntm.stage.parse\t<tm_cl_2@localhost.1.10.0>\n"
              "amq.gen-x1\t<tm_cl_3@localhost.1.11.0>\ntm.dead\t<tm_cl_3@localhost.1.12.0>\n")
    homes = queue_homes(output)
    assert homes == Counter({"tm_cl_2@localhost": 2, "tm_cl_1@localhost": 1})
    nodes = ["tm_cl_1@localhost", "tm_cl_2@localhost", "tm_cl_3@localhost"]
    assert fault_order(homes, nodes) == [1, 0, 2]
    assert fault_order(Counter(), nodes) == [0, 1, 2]


def test_slowest_task_is_the_longest_submission_to_end() -> None:
    tasks = [
        {"created_at": "2026-11-29T12:00:00+00:00", "finished_at": "2026-11-29T12:00:01.500000+00:00"},
        {"created_at": "2026-11-29T12:00:00+00:00", "finished_at": "2026-11-29T12:00:42+00:00"},
        {"created_at": "2026-11-29T12:00:00+00:00", "finished_at": None},
    ]
    assert slowest_task_seconds(tasks) == 42.0
    assert slowest_task_seconds([]) == 0.0
