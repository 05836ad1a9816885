"""Stage implementations by name. A stage module exposes
`build(settings, registry) -> StageHandler`."""

from __future__ import annotations

import importlib

from services.worker.stages.base import StageHandler, StageOutput, StageResources
from shared.settings import Settings
from shared.task_types import TaskTypeRegistry

__all__ = ["StageHandler", "StageOutput", "StageResources", "build_stage", "known_stages"]

_MODULES = {
    "default": "services.worker.stages.default",
    # The document pipeline (document_processing; document_deletion runs on `store`).
    "preprocess": "services.worker.stages.preprocess",
    "chunk": "services.worker.stages.chunk",
    "embed": "services.worker.stages.embed",
    "store": "services.worker.stages.store",
    "index": "services.worker.stages.index",
}


def known_stages() -> tuple[str, ...]:
    return tuple(_MODULES)


def build_stage(name: str, settings: Settings, registry: TaskTypeRegistry) -> StageHandler:
    try:
        module = importlib.import_module(_MODULES[name])
    except KeyError:
        raise SystemExit(f"unknown stage {name!r}; known: {', '.join(_MODULES)}") from None
    return module.build(settings, registry)  # type: ignore[no-any-return]
