"""What `POST /api/v1/workflows` accepts, and its validation (docs/decisions/0101).

The envelope (`{"tasks": [...], "callback_url": ...}`) is one pydantic model,
`WorkflowEnvelope`: the handler validates with it and the OpenAPI document is
generated from it (decision 0192, as 0191 for the batch envelope). Each task is
then validated like a `POST /api/v1/tasks` body, except that `depends_on` names
other tasks of the workflow by `ref`; then the graph: a duplicate ref, a
dangling reference and a cycle are 422s naming them, every problem at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
)

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


class WorkflowEnvelope(BaseModel):
    """What the handler keeps of a valid envelope: the raw tasks (each validated on its
    own afterwards, so that every bad task is named) and the callback URL."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: list[Any]
    callback_url: AnyHttpUrl | None = Field(
        default=None, description="POSTed once, when every task of the workflow ended.")


def envelope_model(task: Any = Any) -> type[WorkflowEnvelope]:
    """The envelope with its bounds (1..MAX_WORKFLOW_TASKS tasks) and a task type: `Any`
    to validate a request, the task types' `WorkflowTask` union to describe one."""
    return create_model(
        "WorkflowRequest", __base__=WorkflowEnvelope,
        tasks=(list[task], Field(min_length=1, max_length=MAX_WORKFLOW_TASKS, strict=True)),
    )


_REQUEST = envelope_model()


@dataclass(frozen=True)
class WorkflowPlan:
    tasks: list[ValidTask]  # in topological order: every task after its parents
    callback_url: str | None
    positions: dict[str, int]  # ref -> index in the request, for error paths (`tasks.3.kb_id`)

    @staticmethod
    def ref_of(valid: ValidTask) -> str:
        return valid.request.ref  # type: ignore[attr-defined, no-any-return]


def validate_workflow(data: Any, registry: TaskTypeRegistry, limits: RequestLimits) -> WorkflowPlan:
    items, callback_url, errors = parse_envelope(data)
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


def parse_envelope(data: Any) -> tuple[list[Any], str | None, list[FieldError]]:
    """The raw tasks and the callback URL of `data`, and what is wrong with the envelope.
    Raises the InvalidRequest the handler has always answered for a bad shape (not an
    object, `tasks` not an array) and for a size out of bounds (with the unknown fields);
    unknown fields and a bad callback URL are otherwise listed with the tasks' problems."""
    try:
        envelope = _REQUEST.model_validate(data)
    except ValidationError as exc:
        # The first error of each field; None for the body itself (not an object).
        first: dict[str | None, Any] = {}
        for error in exc.errors(include_url=False):
            first.setdefault(str(error["loc"][0]) if error["loc"] else None, error)
        if None in first or first.get("tasks", {}).get("type") in ("missing", "list_type"):
            raise InvalidRequest('send {"tasks": [{"ref": "a", ...}, ...]}',
                                 [FieldError("tasks", "must be an array")]) from None
        errors = [FieldError(field, "unknown field") for field in
                  sorted(f for f, e in first.items() if f is not None and e["type"] == "extra_forbidden")]
        if "tasks" in first:
            errors.append(FieldError("tasks", f"holds {len(data['tasks'])} tasks; allowed 1..{MAX_WORKFLOW_TASKS}"))
            raise InvalidRequest(_summary(errors), errors) from None
        if "callback_url" in first:
            errors.append(FieldError("callback_url", first["callback_url"]["msg"]))
        return data["tasks"], None, errors
    callback_url = None if envelope.callback_url is None else str(envelope.callback_url)
    return envelope.tasks, callback_url, []


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
