"""Small pure pieces: retry tiers, signatures, ids, topology names, validation."""

from __future__ import annotations

import time
import uuid

import pytest
from pydantic import BaseModel

from services.worker.retry_policy import RetryPolicy
from shared.errors import InvalidRequest
from shared.ids import new_task_id
from shared.task_request import RequestLimits, validate_task_request
from shared.task_types import TaskType, TaskTypeRegistry, default_registry
from shared.topology import RETRY_TIERS, Topology
from shared.webhooks import WebhookVerificationError, sign, verify


def test_retry_delays_grow_and_pick_the_nearest_tier() -> None:
    policy = RetryPolicy(base_seconds=1, factor=2, jitter=0)
    assert [policy.tier_for(n).name for n in (1, 2, 3, 4, 5, 6, 7, 9, 13)] == [
        "1s", "1s", "5s", "5s", "30s", "30s", "2m", "2m", "1h"]


def test_retry_jitter_stays_within_its_band() -> None:
    policy = RetryPolicy(base_seconds=2, factor=3, jitter=0.2)
    delays = [policy.delay_seconds(3) for _ in range(200)]
    assert min(delays) >= 18 * 0.8 and max(delays) <= 18 * 1.2 and len(set(delays)) > 100


def test_retry_limit_counts_retries_after_the_first_attempt() -> None:
    policy = RetryPolicy(base_seconds=1, factor=2)
    assert [policy.should_retry(a, 2) for a in (1, 2, 3)] == [True, True, False]
    assert policy.should_retry(1, 0) is False


def test_a_signature_verifies_with_any_current_secret_and_rejects_tampering() -> None:
    body = b'{"task_id": "x"}'
    headers = sign(["old-secret", "new-secret"], "msg_1", body)
    verify(["new-secret"], headers, body)
    verify(["old-secret"], headers, body)
    with pytest.raises(WebhookVerificationError):
        verify(["other"], headers, body)
    with pytest.raises(WebhookVerificationError):
        verify(["new-secret"], headers, body + b" ")


def test_a_stale_signature_timestamp_is_rejected() -> None:
    body = b"{}"
    headers = sign(["s"], "msg_1", body, timestamp=int(time.time()) - 3600)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(["s"], headers, body)


def test_task_ids_are_time_ordered_uuid7() -> None:
    first = new_task_id()
    time.sleep(0.002)
    second = new_task_id()
    assert uuid.UUID(first).version == 7 and first < second


def test_topology_names_come_from_one_spec() -> None:
    topology = Topology(("default", "chunk"))
    names = [q.name for q in topology.queues]
    assert names[:2] == ["tm.stage.default", "tm.stage.chunk"]
    assert [t.queue for t in RETRY_TIERS] == [n for n in names if n.startswith("tm.retry.")]
    stage = dict(topology.queue("tm.stage.default").arguments)
    assert stage["x-max-priority"] == 10 and stage["x-overflow"] == "reject-publish"
    retry = dict(topology.queue("tm.retry.5s").arguments)
    assert retry == {"x-message-ttl": 5000, "x-dead-letter-exchange": "tm.tasks"}


class _KbPayload(BaseModel):
    path: str


async def _noop(payload: object, ctx: object) -> None:
    return None


def test_a_task_type_that_needs_a_kb_refuses_a_request_without_one() -> None:
    registry = TaskTypeRegistry([TaskType(name="index_kb", payload_model=_KbPayload, description="",
                                          requires_kb_id=True, handler=_noop)])
    with pytest.raises(InvalidRequest) as caught:
        validate_task_request({"task_type": "index_kb", "payload": {}}, registry, RequestLimits(3, 20))
    assert {e["field"] for e in caught.value.errors} == {"kb_id", "payload.path"}


def test_every_built_in_task_type_runs_on_the_default_stage_with_a_handler() -> None:
    registry = default_registry()
    assert {"test", "echo", "sleep", "fail", "benchmark"} <= set(registry)
    for name in ("test", "echo", "sleep", "fail", "benchmark"):
        assert registry[name].stages == ("default",) and registry[name].handler is not None
