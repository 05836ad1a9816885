"""Who may call which route: one declarative table, read by the auth middleware
(and by the OpenAPI document), never per-handler checks.

Rules match by method and path pattern, so routes other modules add are
covered the moment they are mounted. A path under `/api/` that no rule names
is refused (default deny), and a test checks that every mounted route has a
rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from shared.security.api_keys import Scope


class Open(Enum):
    """Access that needs no API key."""

    PUBLIC = "public"
    # Open unless METRICS_TOKEN is set; then that bearer token.
    METRICS = "metrics"


Access = Scope | Open


def _compile(template: str) -> re.Pattern[str]:
    out, pos = [], 0
    for m in re.finditer(r"\{(\w+)(?::([^{}]+))?\}", template):
        out.append(re.escape(template[pos:m.start()]))
        out.append(f"(?P<{m.group(1)}>{m.group(2) or '[^/]+'})")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(out) + "$")


@dataclass(frozen=True)
class AccessRule:
    methods: frozenset[str]
    template: str  # aiohttp-style: /api/v1/tasks/{task_id}, /api/v1/stats/{tail:.*}
    access: Access
    # Path parameter naming a knowledge base: keys restricted to other kbs get 404.
    tenant_param: str | None = None
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", _compile(self.template))

    def matches(self, method: str, path: str) -> re.Match[str] | None:
        if method not in self.methods and "*" not in self.methods:
            return None
        return self.pattern.match(path)


def rule(methods: str, template: str, access: Access, *, tenant_param: str | None = None) -> AccessRule:
    wanted = {m.strip().upper() for m in methods.split(",")}
    if "GET" in wanted:
        wanted.add("HEAD")  # aiohttp answers HEAD on every GET route
    return AccessRule(frozenset(wanted), template, access, tenant_param)


READ, WRITE, ADMIN = Scope.TASKS_READ, Scope.TASKS_WRITE, Scope.ADMIN

RULES: tuple[AccessRule, ...] = (
    rule("GET", "/health", Open.PUBLIC),
    rule("GET", "/health/{check}", Open.PUBLIC),
    rule("GET", "/metrics", Open.METRICS),
    rule("GET", "/api/v1/openapi.json", Open.PUBLIC),
    rule("GET", "/api/v1/docs", Open.PUBLIC),
    rule("GET", "/api/v1/docs/{asset}", Open.PUBLIC),  # the files of routes/docs.py, and 404 for others
    rule("GET", "/api/v1/asyncapi.json", Open.PUBLIC),
    # The console's static files; what it shows is read with the operator's key.
    rule("GET", "/console", Open.PUBLIC),
    rule("GET", "/console/{asset}", Open.PUBLIC),  # the files of routes/console.py, and 404 for others
    rule("GET", "/api/v1/me", READ),
    rule("POST", "/api/v1/tasks", WRITE),
    rule("POST", "/api/v1/tasks/batch", WRITE),
    rule("GET", "/api/v1/tasks", READ),
    rule("GET", "/api/v1/tasks/{task_id}", READ),
    rule("DELETE", "/api/v1/tasks/{task_id}", WRITE),
    rule("POST", "/api/v1/tasks/{task_id}/retry", WRITE),
    rule("POST", "/api/v1/tasks/bulk/{action}", WRITE),  # the filters keep it in the key's kbs
    rule("GET", "/api/v1/events", READ),
    rule("POST", "/api/v1/uploads", WRITE),
    rule("POST", "/api/v1/workflows", WRITE),
    rule("GET", "/api/v1/workflows/{workflow_id}", READ),
    rule("DELETE", "/api/v1/workflows/{workflow_id}", WRITE),
    # Periodic schedules: scoped to their template's kb inside the handlers, like tasks.
    rule("POST", "/api/v1/schedules", WRITE),
    rule("GET", "/api/v1/schedules", READ),
    rule("GET", "/api/v1/schedules/{schedule_id}", READ),
    rule("DELETE", "/api/v1/schedules/{schedule_id}", WRITE),
    rule("POST", "/api/v1/schedules/{schedule_id}/{action}", WRITE),
    # Fleet-wide operations: every tenant's dead letters and statistics.
    rule("*", "/api/v1/dlq", ADMIN),
    rule("*", "/api/v1/dlq/{tail:.*}", ADMIN),
    rule("*", "/api/v1/stats", ADMIN),
    rule("*", "/api/v1/stats/{tail:.*}", ADMIN),
    # Knowledge-base routes: the kb in the path must be one the key may use.
    rule("POST", "/api/v1/kbs/{kb_id}/search", READ, tenant_param="kb_id"),
    rule("GET", "/api/v1/kbs/{kb_id}/documents", READ, tenant_param="kb_id"),
    rule("GET", "/api/v1/kbs/{kb_id}/documents/{document_id}", READ, tenant_param="kb_id"),
    rule("GET", "/api/v1/kbs/{kb_id}/documents/{document_id}/chunks", READ, tenant_param="kb_id"),
    rule("DELETE", "/api/v1/kbs/{kb_id}/documents/{document_id}", WRITE, tenant_param="kb_id"),
    rule("POST", "/api/v1/kbs/{kb_id}/documents/{document_id}/reprocess", WRITE, tenant_param="kb_id"),
    rule("POST", "/api/v1/kbs/{kb_id}/reembed", WRITE, tenant_param="kb_id"),
)


@dataclass(frozen=True)
class Decision:
    rule: AccessRule | None  # None: no rule names this request (default deny under /api/)
    tenant_kb: str | None = None


def decide(method: str, path: str, rules: tuple[AccessRule, ...] = RULES) -> Decision:
    method = method.upper()
    for candidate in rules:
        match = candidate.matches(method, path)
        if match is not None:
            kb = match.group(candidate.tenant_param) if candidate.tenant_param else None
            return Decision(candidate, kb)
    return Decision(None)
