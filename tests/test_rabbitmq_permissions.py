"""deploy/rabbitmq/definitions.json against the topology: each role
can do exactly what its process does (names from shared/topology.py), and
nothing else that matters: no external publisher writes a stage queue, no
worker reads tm.submit, nobody but the admin declares the topology."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import pytest

from shared.task_types import default_registry
from shared.topology import (
    CONTROL_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
    DEAD_QUEUE,
    DISPATCHER_EVENTS_QUEUE,
    DISPATCHER_RPC_QUEUE,
    EVENTS_EXCHANGE,
    RETRY_EXCHANGE,
    RETRY_TIERS,
    SUBMIT_EXCHANGE,
    SUBMIT_QUEUE,
    TASKS_EXCHANGE,
    Topology,
    stage_queue,
)

pytestmark = pytest.mark.fast  # no broker, database or child process (make test-fast)

DEFINITIONS = Path(__file__).resolve().parents[1] / "deploy" / "rabbitmq" / "definitions.json"
DEFAULT = "amq.default"
SERVER_NAMED = "amq.gen-JzTY20BRgKO-HjmUJj0wLg"  # an exclusive, server-named queue
CLIENT_NAMED = "amq_a02fe9bf04d04789bb9574e9debc959e"  # what aio-pika names an unnamed queue
STAGES = [stage_queue(s) for s in (*default_registry(demo=True).stages(), "chunk", "embed")]


def _permissions() -> dict[str, dict[str, str]]:
    data = json.loads(DEFINITIONS.read_text())
    return {p["user"]: p for p in data["permissions"]}


def _allows(user: str, kind: str, resource: str) -> bool:
    if resource == SERVER_NAMED:  # both spellings of a private reply/control queue
        return all(_allows(user, kind, name) for name in ("amq.gen-x", CLIENT_NAMED))
    return re.match(_permissions()[user][kind], resource) is not None


# (configure, write, read) each process needs, per the AMQP operations it performs
# with AMQP_DECLARE_TOPOLOGY=false (passive declares need no permission).
NEEDS = {
    "taskmgr-api": {
        "configure": [SERVER_NAMED],  # live views: an exclusive queue bound to tm.events
        "write": [TASKS_EXCHANGE, EVENTS_EXCHANGE, CONTROL_EXCHANGE, DEAD_LETTER_EXCHANGE, DEFAULT, SERVER_NAMED],
        "read": [SUBMIT_QUEUE, DEAD_QUEUE, EVENTS_EXCHANGE, SERVER_NAMED],
    },
    "taskmgr-worker": {
        "configure": [SERVER_NAMED],  # its tm.control queue and its rpc reply queue
        "write": [TASKS_EXCHANGE, RETRY_EXCHANGE, EVENTS_EXCHANGE, DEAD_LETTER_EXCHANGE, DEFAULT, SERVER_NAMED],
        # tm.events: the store stage's janitor binds task.failed/task.cancelled (topic-limited).
        "read": [*STAGES, CONTROL_EXCHANGE, EVENTS_EXCHANGE, SERVER_NAMED],
    },
    "taskmgr-dispatcher": {
        "configure": [],
        # tm.tasks: released delayed tasks (decision 0090); the default exchange: schedules' firings to tm.submit.
        "write": [TASKS_EXCHANGE, CONTROL_EXCHANGE, DEAD_LETTER_EXCHANGE, DEFAULT],
        "read": [DISPATCHER_EVENTS_QUEUE, DISPATCHER_RPC_QUEUE],
    },
    "kb-service": {
        "configure": [SERVER_NAMED],  # its reply queue
        "write": [SUBMIT_EXCHANGE],
        "read": [SERVER_NAMED],
    },
}

# What would break least privilege.
MUST_NOT = {
    "taskmgr-api": {"configure": [TASKS_EXCHANGE, SUBMIT_QUEUE, *STAGES], "write": [RETRY_EXCHANGE],
                    "read": [*STAGES, DISPATCHER_EVENTS_QUEUE]},
    "taskmgr-worker": {"configure": [TASKS_EXCHANGE, *STAGES, DEAD_QUEUE],
                       "write": [SUBMIT_EXCHANGE, CONTROL_EXCHANGE],
                       "read": [SUBMIT_QUEUE, DEAD_QUEUE, DISPATCHER_EVENTS_QUEUE, "tm.stage.a.b"]},
    "taskmgr-dispatcher": {"configure": [SERVER_NAMED, DISPATCHER_EVENTS_QUEUE],
                           "write": [EVENTS_EXCHANGE, RETRY_EXCHANGE],
                           "read": [SUBMIT_QUEUE, DEAD_QUEUE, *STAGES]},
    "kb-service": {"configure": [SUBMIT_QUEUE, SUBMIT_EXCHANGE, *STAGES],
                   "write": [DEFAULT, TASKS_EXCHANGE, EVENTS_EXCHANGE, CONTROL_EXCHANGE, DEAD_LETTER_EXCHANGE],
                   "read": [SUBMIT_QUEUE, DEAD_QUEUE, *STAGES, EVENTS_EXCHANGE]},
}


@pytest.mark.parametrize("user", sorted(NEEDS))
def test_each_role_may_do_what_its_process_does(user: str) -> None:
    for kind, resources in NEEDS[user].items():
        for resource in resources:
            assert _allows(user, kind, resource), f"{user} lacks {kind} on {resource}"


@pytest.mark.parametrize("user", sorted(MUST_NOT))
def test_each_role_may_do_nothing_more_that_matters(user: str) -> None:
    for kind, resources in MUST_NOT[user].items():
        for resource in resources:
            assert not _allows(user, kind, resource), f"{user} must not have {kind} on {resource}"


def test_the_admin_can_declare_every_name_of_the_topology_and_every_regex_is_anchored() -> None:
    topology = Topology((*default_registry(demo=True).stages(), "chunk"))
    names = [e.name for e in topology.exchanges] + [q.name for q in topology.queues]
    assert {t.queue for t in RETRY_TIERS} <= set(names) and SUBMIT_EXCHANGE in names
    for name in names:
        for kind in ("configure", "write", "read"):
            assert _allows("taskmgr-admin", kind, name), (kind, name)
    for user, perms in _permissions().items():
        for kind in ("configure", "write", "read"):
            assert perms[kind].startswith("^") and perms[kind].endswith("$"), (user, kind)


def test_one_definitions_file_holds_every_role_with_its_development_password_and_the_policies() -> None:
    """The compose broker loads this file: each role logs in with the development
    password docker-compose.yml uses by default (its own name; docs/deployment.md
    says to change them), and the policies live on the same vhost as the users."""
    data = json.loads(DEFINITIONS.read_text())
    assert {p["user"] for p in data["permissions"]} == {u["name"] for u in data["users"]}
    for user in data["users"]:
        raw = base64.b64decode(user["password_hash"])
        salt, digest = raw[:4], raw[4:]
        assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
        assert hashlib.sha256(salt + user["name"].encode()).digest() == digest, user["name"]
    assert {v["name"] for v in data["vhosts"]} == {"taskmgr"}
    assert {p["vhost"] for p in data["policies"] + data["permissions"]} == {"taskmgr"}
    assert "guest" not in {u["name"] for u in data["users"]}
