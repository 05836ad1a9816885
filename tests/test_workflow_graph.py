"""Workflow validation without a fleet: every problem of the graph named, the
order topological (every task after its parents)."""

from __future__ import annotations

from typing import Any

import pytest

from services.api.workflow_request import WorkflowPlan, validate_workflow
from shared.errors import InvalidRequest
from shared.task_request import RequestLimits
from shared.task_types import default_registry

LIMITS = RequestLimits(default_retry_limit=3, max_retry_limit=10)


def _validate(tasks: list[dict[str, Any]]) -> WorkflowPlan:
    return validate_workflow({"tasks": tasks}, default_registry(demo=True), LIMITS)


def _problems(tasks: list[dict[str, Any]]) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as caught:
        _validate(tasks)
    return {e["field"]: e["message"] for e in caught.value.errors or []}


def test_the_order_puts_every_task_after_its_parents() -> None:
    plan = _validate([
        {"ref": "d", "task_type": "echo", "depends_on": ["b", "c"]},
        {"ref": "c", "task_type": "echo", "depends_on": ["a"]},
        {"ref": "b", "task_type": "echo", "depends_on": ["a"]},
        {"ref": "a", "task_type": "echo"},
    ])
    order = [WorkflowPlan.ref_of(t) for t in plan.tasks]
    assert order[0] == "a" and order[-1] == "d"
    assert plan.positions == {"d": 0, "c": 1, "b": 2, "a": 3}


def test_a_self_reference_and_a_long_cycle_are_named() -> None:
    assert "itself" in _problems([{"ref": "a", "task_type": "echo", "depends_on": ["a"]}])["tasks.0.depends_on.0"]
    problems = _problems([
        {"ref": "root", "task_type": "echo"},
        {"ref": "x", "task_type": "echo", "depends_on": ["root", "z"]},
        {"ref": "y", "task_type": "echo", "depends_on": ["x"]},
        {"ref": "z", "task_type": "echo", "depends_on": ["y"]},
        {"ref": "after", "task_type": "echo", "depends_on": ["z"]},
    ])
    assert problems == {"tasks.1.depends_on": "cycle: x -> z -> y -> x"}


def test_every_problem_is_listed_at_once() -> None:
    problems = _problems([
        {"ref": "a", "task_type": "nope"},
        {"ref": "bad ref", "task_type": "echo", "depends_on": ["a", "a"]},
        {"task_type": "echo"},
    ])
    assert set(problems) == {"tasks.0.task_type", "tasks.1.ref", "tasks.1.depends_on", "tasks.2.ref"}


def test_the_envelope_is_checked() -> None:
    with pytest.raises(InvalidRequest):
        validate_workflow([], default_registry(demo=True), LIMITS)
    with pytest.raises(InvalidRequest) as caught:
        validate_workflow({"tasks": [{"ref": "a", "task_type": "echo"}], "extra": 1, "callback_url": "ftp://x"},
                          default_registry(demo=True), LIMITS)
    assert {e["field"] for e in caught.value.errors or []} == {"extra", "callback_url"}
    with pytest.raises(InvalidRequest):
        validate_workflow({"tasks": []}, default_registry(demo=True), LIMITS)
