"""The OpenAPI 3.1 document, generated from the running app: its routes, the
`@documented` operation attached to each handler, the pydantic models the
handlers validate and answer with, and the access table (security, scopes).
Nothing is written twice, so the document cannot drift from the code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeGuard, TypeVar, Union, cast

from aiohttp import web
from pydantic import BaseModel, Field, TypeAdapter, create_model

from services.api.access_policy import Open, decide
from services.api.batch_envelope import envelope_model as batch_envelope
from services.api.schemas import ErrorResponse
from services.api.workflow_request import WorkflowTask
from services.api.workflow_request import envelope_model as workflow_envelope
from shared.json_types import json_int
from shared.security.api_keys import Scope
from shared.settings import Settings
from shared.task_request import KB_ID_PATTERN, BatchItem, TaskRequest
from shared.task_types import TaskTypeRegistry

REF = "#/components/schemas/{model}"
H = TypeVar("H", bound=Callable[..., Any])

ERROR_TEXT = {
    400: "The body is not valid JSON.",
    401: "No API key, or one that is unknown, revoked or expired.",
    403: "The API key lacks the scope, or may not use this kb_id.",
    404: "Not found (also another tenant's task: its existence is not revealed).",
    409: "Conflict with the current state.",
    413: "The body is larger than allowed (or than the tenant's upload quota).",
    422: "The request is invalid; `error.details` names each field.",
    429: "A rate limit was hit; wait `Retry-After` seconds.",
    503: "The broker or database cannot take it now; retry after `Retry-After` seconds.",
    507: "The server's storage is nearly full; retry later.",
}


@dataclass(frozen=True)
class DocContext:
    settings: Settings
    registry: TaskTypeRegistry


# A model (a component), or a function of the app returning one, or a type pydantic describes
# (a union of models: inline, its models as components), or a hand-written JSON schema.
SchemaSource = type[BaseModel] | Callable[[DocContext], Any]


@dataclass(frozen=True)
class Operation:
    summary: str
    description: str = ""
    tag: str = "tasks"
    body: SchemaSource | None = None
    body_type: Literal["json", "multipart"] = "json"
    query: SchemaSource | None = None
    # path parameter -> JSON schema (default: a non-empty string)
    path: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    # request header -> (description, JSON schema)
    headers: Mapping[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    # status -> (model, or several models (oneOf), or None for no body; description)
    responses: Mapping[int, tuple[type[BaseModel] | tuple[type[BaseModel], ...] | None, str]] = field(
        default_factory=dict)
    # The media type of the success answers (JSON unless e.g. a page or Prometheus text).
    media_type: str = "application/json"
    errors: tuple[int, ...] = ()
    response_headers: Mapping[int, Mapping[str, str]] = field(default_factory=dict)


def documented(operation: Operation) -> Callable[[H], H]:
    def attach(handler: H) -> H:
        handler.__openapi__ = operation  # type: ignore[attr-defined]
        return handler

    return attach


# --- task requests: TaskRequest + each task type's payload model ------------------------------


def task_request_models(ctx: DocContext, base: type[TaskRequest] = TaskRequest) -> list[type[BaseModel]]:
    """One model per task type: the fields of `base` with `task_type` fixed and
    `payload` typed by the type's own payload model (what validation applies)."""
    models: list[type[BaseModel]] = []
    for name, task_type in sorted(ctx.registry.items()):
        payload_model = task_type.payload_model
        payload_required = any(f.is_required() for f in payload_model.model_fields.values())
        fields: dict[str, Any] = {
            "task_type": (Literal[name], Field(description=task_type.description)),
            "payload": (payload_model, ... if payload_required else Field(default_factory=dict)),
            "retry_limit": (json_int(ge=0, le=ctx.settings.api.max_retry_limit) | None, Field(default=None)),
        }
        if task_type.requires_kb_id:
            fields["kb_id"] = (str, Field(pattern=KB_ID_PATTERN))
        title = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]", name))
        models.append(create_model(f"{title}{base.__name__}", __base__=base, **fields))
    return models


def task_union(models: list[type[BaseModel]]) -> Any:
    """One of the task types' request models, told apart by `task_type` (pydantic's
    discriminated union: its schema is a oneOf with a discriminator mapping)."""
    if len(models) == 1:
        return models[0]
    return Annotated[Union[tuple(models)], Field(discriminator="task_type")]  # noqa: UP007 - built at run time


def task_request_union(ctx: DocContext) -> Any:
    """The `POST /api/v1/tasks` body as the task types' `TaskRequest` models. The handler
    validates the same parts (TaskRequest, then the type's payload model) one after the
    other, so that every problem is named at its field (shared/task_request.py)."""
    return task_union(task_request_models(ctx))


def batch_request_model(ctx: DocContext) -> type[BaseModel]:
    """The batch envelope the handler validates, its items typed as the task types' batch items."""
    return batch_envelope(ctx.settings.api.max_batch_size, task_union(task_request_models(ctx, BatchItem)))


def workflow_request_model(ctx: DocContext) -> type[BaseModel]:
    """The workflow envelope the handler validates, its tasks typed as the task types' workflow tasks."""
    return workflow_envelope(task_union(task_request_models(ctx, WorkflowTask)))


# --- the document ---------------------------------------------------------------------------------


# What the server accepts inside free-form JSON (e.g. an `echo` payload).
NUL_FREE = "^[^\\u0000]*$"
JSON_VALUE: dict[str, Any] = {
    "description": "Any JSON value without NUL characters (PostgreSQL cannot store them) and with finite numbers.",
    "anyOf": [
        {"type": "string", "pattern": NUL_FREE},
        # Finite doubles: the parser reads integers beyond 64 bits as floats, and refuses infinity.
        {"type": "number", "minimum": -1.7976931348623157e308, "maximum": 1.7976931348623157e308},
        {"type": "boolean"},
        {"type": "null"},
        {"type": "array", "items": {"$ref": REF.format(model="JsonValue")}},
        {"type": "object", "additionalProperties": {"$ref": REF.format(model="JsonValue")},
         "propertyNames": {"pattern": NUL_FREE}},
    ],
}


def _precise(schema: Any) -> Any:
    """Say in the schema what the server enforces beyond pydantic's output: no
    NUL in strings, free-form values as JsonValue."""
    if isinstance(schema, list):
        return [_precise(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _precise(v) for k, v in schema.items()}
    if out.get("type") == "string" and not {"pattern", "enum", "const", "format", "contentMediaType"} & set(out):
        out["pattern"] = NUL_FREE
    if out.get("additionalProperties") is True:
        out["additionalProperties"] = {"$ref": REF.format(model="JsonValue")}
        out["propertyNames"] = {"pattern": NUL_FREE}
    return out


def build_openapi(app: web.Application, ctx: DocContext) -> dict[str, Any]:
    schemas: dict[str, Any] = {"JsonValue": JSON_VALUE}
    _collect(ErrorResponse, schemas, "serialization")
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        resource = route.resource
        if route.method == "HEAD" or resource is None:
            continue
        path = resource.canonical
        operation: Operation | None = getattr(route.handler, "__openapi__", None)
        if operation is None:
            operation = Operation(summary=f"{route.method} {path}", tag="other", errors=(422,))
        paths.setdefault(_openapi_path(path), {})[route.method.lower()] = _operation(
            route.method, path, operation, ctx, schemas
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "KB task manager",
            "version": "1",
            "description": "Asynchronous tasks for a knowledge-base service. Send `Authorization: Bearer <key>` "
                           "(keys from `taskmgr keys create`). Every error answers `{\"error\": {code, message, "
                           "details}}`.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "bearerFormat": "tmk_<id>_<secret>",
                           "description": "An API key; its scopes and knowledge bases decide what it may do."},
                "metricsToken": {"type": "http", "scheme": "bearer", "description": "METRICS_TOKEN"},
            },
        },
    }


def _operation(method: str, path: str, op: Operation, ctx: DocContext, schemas: dict[str, Any]) -> dict[str, Any]:
    decision = decide(method, path)
    access = decision.rule.access if decision.rule else Scope.ADMIN
    out: dict[str, Any] = {
        "summary": op.summary, "tags": [op.tag],
        "operationId": re.sub(r"[^A-Za-z0-9]+", "_", f"{method.lower()}{path}").strip("_"),
    }
    if op.description:
        out["description"] = op.description
    errors = set(op.errors)
    if isinstance(access, Scope):
        out["security"] = [{"apiKey": []}]
        out["x-required-scope"] = access.value
        errors |= {401, 403, 429}
    elif access is Open.METRICS and ctx.settings.auth.metrics_token is not None:
        out["security"] = [{"metricsToken": []}]
        errors.add(401)
    else:
        out["security"] = []

    parameters = [
        {"name": name, "in": "path", "required": True,
         "schema": op.path.get(name, {"type": "string", "minLength": 1})}
        for name in re.findall(r"\{(\w+)", path)
    ]
    if parameters:
        errors.add(404)
    if op.path:
        errors.add(422)  # a path parameter outside its pattern is named in a 422
    if op.query is not None:
        query = _schema(op.query, ctx, schemas, inline=True)
        for name, prop in query.get("properties", {}).items():
            parameters.append({"name": name, "in": "query", "required": name in query.get("required", []),
                               "schema": prop})
    for name, (description, schema) in op.headers.items():
        parameters.append({"name": name, "in": "header", "required": False, "description": description,
                           "schema": schema})
    if parameters:
        out["parameters"] = parameters

    if op.body is not None:
        if op.body_type == "json":
            body = _schema(op.body, ctx, schemas)
            out["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
            errors |= {400, 413, 422}
        else:
            body = _schema(op.body, ctx, schemas, inline=True)
            out["requestBody"] = {"required": True, "content": {"multipart/form-data": {
                "schema": body, "encoding": {"file": {"contentType": "application/octet-stream"}}}}}
            errors |= {413, 422}

    responses: dict[str, Any] = {}
    for status, (model, description) in op.responses.items():
        answer: dict[str, Any] = {"description": description}
        if isinstance(model, tuple):
            for one in model:
                _collect(one, schemas, "serialization")
            answer["content"] = {"application/json": {"schema": {
                "oneOf": [{"$ref": REF.format(model=one.__name__)} for one in model]}}}
        elif model is not None:
            _collect(model, schemas, "serialization")
            answer["content"] = {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}}
        else:
            json_body = op.media_type == "application/json"
            answer["content"] = {op.media_type: {"schema": {"type": "object" if json_body else "string"}}}
        if status in op.response_headers:
            answer["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                                 for name, text in op.response_headers[status].items()}
        responses[str(status)] = answer
    for status in sorted(errors):
        answer = {"description": ERROR_TEXT.get(status, "Error."),
                  "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}}}
        if status in (429, 503):
            answer["headers"] = {"Retry-After": {"description": "Seconds to wait.", "required": True,
                                                 "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
        if status == 401:
            answer["headers"] = {"WWW-Authenticate": {"description": "RFC 6750 challenge.", "required": True,
                                                      "schema": {"type": "string"}}}
        responses.setdefault(str(status), answer)
    if not op.responses:
        responses.setdefault("200", {"description": "OK", "content": {"application/json": {"schema": {}}}})
    out["responses"] = responses
    return out


def _schema(source: SchemaSource, ctx: DocContext, schemas: dict[str, Any], *, inline: bool = False) -> dict[str, Any]:
    made: Any = source if _is_model(source) else cast("Callable[[DocContext], Any]", source)(ctx)
    if _is_model(made):
        if inline:
            return _precise(made.model_json_schema(ref_template=REF))  # type: ignore[no-any-return]
        _collect(made, schemas, "validation")
        return {"$ref": REF.format(model=made.__name__)}
    if isinstance(made, dict):
        return _precise(made)  # type: ignore[no-any-return]
    schema = _precise(TypeAdapter(made).json_schema(ref_template=REF, mode="validation"))
    for name, definition in schema.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    return schema  # type: ignore[no-any-return]


def _is_model(value: object) -> TypeGuard[type[BaseModel]]:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _collect(model: type[BaseModel], schemas: dict[str, Any], mode: Literal["validation", "serialization"]) -> None:
    schema = model.model_json_schema(ref_template=REF, mode=mode)
    if mode == "validation":
        schema = _precise(schema)
    for name, definition in schema.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    schemas.setdefault(model.__name__, schema)


def _openapi_path(path: str) -> str:
    return re.sub(r"\{(\w+):[^}]+\}", r"{\1}", path)
