"""What `POST /api/v1/workflows` accepts, and its validation (docs/decisions/0101).

Each task is validated like a `POST /api/v1/tasks` body, except that
`depends_on` names other tasks of the workflow by `ref`; then the graph: a
duplicate ref, a dangling reference and a cycle are 422s naming them, every
problem at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AnyHttpUrl, Field, TypeAdapter, ValidationError, field_validator

from shared.errors import FieldError, InvalidRequest
from shared.task_request import (
    MAX_PARENTS,
    RequestLimits,
    TaskRequest,
    ValidTask,
    validate_task_request,
)
from shared.task_types import TaskTypeRegistry

REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$"
# Tasks in one workflow: admitted in one transaction, so bounded (a fan-out of 1,000 is the floor).
MAX_WORKFLOW_TASKS = 5_000
_CALLBACK_URL = TypeAdapter(AnyHttpUrl)


class WorkflowTask(TaskRequest):
    """One task of a workflow: a task request with a local name; `depends_on` names refs."""

    ref: str = Field(pattern=REF_PATTERN, description="This task's name within the workflow.")
    depends_on: list[Annotated[str, Field(pattern=REF_PATTERN)]] = Field(
        default_factory=list, max_length=MAX_PARENTS,
        description="Refs of the tasks of this workflow that must complete before this one runs.",
    )

    @field_validator("depends_on")
    @classmethod
    def _distinct_parents(cls, value: list[str]) -> list[str]:
        duplicates = sorted({ref for ref in value if value.count(ref) > 1})
        if duplicates:
            raise ValueError(f"lists {', '.join(map(repr, duplicates))} more than once")
        return value


@dataclass(frozen=True)
class WorkflowPlan:
    tasks: list[ValidTask]  # in topological order: every task after its parents
    callback_url: str | None
    positions: dict[str, int]  # ref -> index in the request, for error paths (`tasks.3.kb_id`)

    @staticmethod
    def ref_of(valid: ValidTask) -> str:
        return valid.request.ref  # type: ignore[attr-defined, no-any-return]


def validate_workflow(data: Any, registry: TaskTypeRegistry, limits: RequestLimits) -> WorkflowPlan:
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
        raise InvalidRequest('send {"tasks": [{"ref": "a", ...}, ...]}', [FieldError("tasks", "must be an array")])
    errors = [FieldError(k, "unknown field") for k in sorted(set(data) - {"tasks", "callback_url"})]
    items = data["tasks"]
    if not 1 <= len(items) <= MAX_WORKFLOW_TASKS:
        errors.append(FieldError("tasks", f"holds {len(items)} tasks; allowed 1..{MAX_WORKFLOW_TASKS}"))
        raise InvalidRequest(_summary(errors), errors)
    callback_url = data.get("callback_url")
    if callback_url is not None:
        try:
            callback_url = str(_CALLBACK_URL.validate_python(callback_url))
        except ValidationError as exc:
            errors.append(FieldError("callback_url", exc.errors(include_url=False)[0]["msg"]))

    valid: list[ValidTask | None] = []
    for i, item in enumerate(items):
        try:
            valid.append(validate_task_request(item, registry, limits, model=WorkflowTask))
        except InvalidRequest as exc:
            errors.extend(FieldError(f"tasks.{i}.{e['field']}", e["message"]) for e in exc.errors or [])
            valid.append(None)
    if errors:
        raise InvalidRequest(_summary(errors), errors)
    tasks = [v for v in valid if v is not None]
    errors.extend(_graph_errors(tasks))
    if errors:
        raise InvalidRequest(_summary(errors), errors)
    return WorkflowPlan(_topological(tasks), callback_url,
                        {WorkflowPlan.ref_of(t): i for i, t in enumerate(tasks)})


def _graph_errors(tasks: list[ValidTask]) -> list[FieldError]:
    refs: dict[str, int] = {}
    errors = []
    for i, task in enumerate(tasks):
        ref = WorkflowPlan.ref_of(task)
        if ref in refs:
            errors.append(FieldError(f"tasks.{i}.ref", f"ref {ref!r} is already used by tasks.{refs[ref]}"))
        refs.setdefault(ref, i)
    for i, task in enumerate(tasks):
        for j, parent in enumerate(task.request.depends_on):
            if parent not in refs:
                errors.append(FieldError(f"tasks.{i}.depends_on.{j}", f"unknown ref {parent!r} (no task of this "
                                                                       "workflow has it)"))
            elif parent == WorkflowPlan.ref_of(task):
                errors.append(FieldError(f"tasks.{i}.depends_on.{j}", f"task {parent!r} cannot depend on itself"))
    if errors:
        return errors
    cycle = _find_cycle(tasks)
    if cycle:
        where = refs[cycle[0]]
        return [FieldError(f"tasks.{where}.depends_on", "cycle: " + " -> ".join(cycle))]
    return []


def _topological(tasks: list[ValidTask]) -> list[ValidTask]:
    """Kahn's order, stable: among ready tasks, the order they were sent in."""
    by_ref = {WorkflowPlan.ref_of(t): t for t in tasks}
    remaining = {ref: len(t.request.depends_on) for ref, t in by_ref.items()}
    children: dict[str, list[str]] = {ref: [] for ref in by_ref}
    for ref, task in by_ref.items():
        for parent in task.request.depends_on:
            children[parent].append(ref)
    ready = [ref for ref in by_ref if remaining[ref] == 0]
    order = []
    while ready:
        ref = ready.pop(0)
        order.append(by_ref[ref])
        for child in children[ref]:
            remaining[child] -= 1
            if remaining[child] == 0:
                ready.append(child)
    return order


def _find_cycle(tasks: list[ValidTask]) -> list[str]:
    """One cycle as refs (`a -> b -> a`), or [] when the graph is acyclic."""
    ordered = {WorkflowPlan.ref_of(t) for t in _topological(tasks)}
    left = {WorkflowPlan.ref_of(t): list(t.request.depends_on) for t in tasks if WorkflowPlan.ref_of(t) not in ordered}
    if not left:
        return []
    # Every task left waits on another task left: walking parents must repeat a ref.
    path: list[str] = []
    ref = next(iter(left))
    while ref not in path:
        path.append(ref)
        ref = next(p for p in left[ref] if p in left)
    return [*path[path.index(ref):], ref]


def _summary(errors: list[FieldError]) -> str:
    return "; ".join(f"{e['field']}: {e['message']}" for e in errors)
