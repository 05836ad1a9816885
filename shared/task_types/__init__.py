"""The catalog of task types. Adding a task type means adding one module here
that defines `TASK_TYPE`; it is discovered at import. Demonstration types live in
`demo/` and are registered only when asked for."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Mapping
from functools import lru_cache

from shared.task_types.base import Handler, Payload, TaskContext, TaskType

__all__ = ["Handler", "Payload", "TaskContext", "TaskType", "TaskTypeRegistry", "default_registry"]


class TaskTypeRegistry(Mapping[str, TaskType]):
    def __init__(self, task_types: list[TaskType]) -> None:
        self._types: dict[str, TaskType] = {}
        for task_type in task_types:
            if task_type.name in self._types:
                raise ValueError(f"task type {task_type.name!r} is defined twice")
            self._types[task_type.name] = task_type

    def __getitem__(self, name: str) -> TaskType:
        return self._types[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._types)

    def __len__(self) -> int:
        return len(self._types)

    def stages(self) -> tuple[str, ...]:
        """Every stage some task type runs through, in first-seen order."""
        seen: dict[str, None] = {}
        for task_type in self._types.values():
            for stage in task_type.stages:
                seen.setdefault(stage)
        return tuple(seen)


def _discover(package: str, path: list[str]) -> list[TaskType]:
    found = []
    for module_info in pkgutil.iter_modules(path):
        if module_info.name.startswith("_") or module_info.name == "base" or module_info.ispkg:
            continue
        module = importlib.import_module(f"{package}.{module_info.name}")
        task_type = getattr(module, "TASK_TYPE", None)
        if isinstance(task_type, TaskType):
            found.append(task_type)
    return found


@lru_cache(maxsize=2)
def default_registry(*, demo: bool) -> TaskTypeRegistry:
    """The task types of this package; with `demo`, also those of `shared.task_types.demo`
    (`ServiceSettings.demo_task_types_enabled`: on in development, off in production)."""
    found = _discover(__name__, __path__)
    if demo:
        from shared.task_types import demo as demo_package

        found += _discover(demo_package.__name__, list(demo_package.__path__))
    return TaskTypeRegistry(sorted(found, key=lambda t: t.name))
