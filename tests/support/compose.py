"""docker-compose.yml read the way Compose reads it, to run its services on the host.

There is no Docker engine on these machines, so tests/test_compose_start.py
runs each taskmgr service's own `command` with its own `environment` (YAML
anchors and merge keys resolved, `${VAR:-default}` interpolated from the
variables given, like Compose's .env), changing only what a container would
have had of its own: the host names of other services, named volumes, and a
network namespace (ports).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
TASKMGR_IMAGE = "kb-task-manager"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}, $VAR, and $$ (a literal $).
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class InterpolationError(ValueError):
    pass


def interpolate(text: str, variables: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        value = variables.get(name)
        op, arg = match["op"], match["arg"] or ""
        if op in (":-", ":?") and not value or op in ("-", "?") and value is None:
            if op.endswith("?"):
                raise InterpolationError(f"{name}: {arg or 'required'}")
            return arg
        return value or ""

    return _VARIABLE.sub(replace, text)


@dataclass(frozen=True)
class Service:
    name: str
    command: list[str]
    environment: dict[str, str]
    volumes: list[str]
    depends_on: dict[str, str]  # service -> condition
    one_off: bool  # restart "no": runs to completion, others wait for it

    def volume_targets(self) -> dict[str, str]:
        """Named volume -> the path it is mounted at in this service."""
        found = {}
        for volume in self.volumes:
            source, target = volume.split(":")[:2]
            if not source.startswith((".", "/")):
                found[source] = target
        return found


def load(variables: dict[str, str] | None = None) -> dict[str, Service]:
    """Every service built from our image, interpolated with `variables` (none: the defaults)."""
    variables = variables or {}
    document = yaml.safe_load(COMPOSE_FILE.read_text())  # merge keys and anchors resolved here
    services = {}
    for name, raw in document["services"].items():
        if not str(raw.get("image", "")).startswith(TASKMGR_IMAGE):
            continue
        depends = raw.get("depends_on", {})
        if isinstance(depends, list):
            depends = {d: "service_started" for d in depends}
        services[name] = Service(
            name=name,
            command=[interpolate(str(part), variables) for part in raw["command"]],
            environment={k: interpolate(str(v), variables) for k, v in (raw.get("environment") or {}).items()},
            volumes=[interpolate(v, variables) for v in raw.get("volumes", [])],
            depends_on={d: (c["condition"] if isinstance(c, dict) else c) for d, c in depends.items()},
            one_off=str(raw.get("restart", "")) == "no",
        )
    return services


def start_order(services: dict[str, Service]) -> list[Service]:
    """Dependencies first (Compose's order); a cycle is an error, as in Compose."""
    ordered: list[Service] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in {s.name for s in ordered} or name not in services:
            return
        if name in visiting:
            raise ValueError(f"dependency cycle through {name}")
        visiting.add(name)
        for dependency in services[name].depends_on:
            visit(dependency)
        visiting.discard(name)
        ordered.append(services[name])

    for name in services:
        visit(name)
    return ordered

