"""Hostile JSON: one depth and size guard where JSON enters, so a value the api
accepts is always one the database and the workers can encode and parse, and
a bad row never fails the rows it shares a transaction with."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aio_pika
import orjson
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, model_validator

from services.api.admission import Admission, Admitted
from services.api.submission_checks import SubmissionChecks
from services.api.submit_consumer import SubmitConsumer
from shared.amqp import headers as h
from shared.amqp.publisher import Publisher
from shared.db.engine import create_engine
from shared.errors import InternalError, InvalidRequest, PoisonMessage
from shared.json_limits import (
    MAX_DEPTH,
    JsonLimits,
    JsonTooComplex,
    check_json_shape,
    loads_checked,
)
from shared.messages import TaskMessage, parse_task_events, utcnow
from shared.security.callback_policy import CallbackPolicy
from shared.task_request import BatchItem, RequestLimits, ValidTask, validate_task_request
from shared.task_types import TaskType, TaskTypeRegistry, default_registry
from shared.topology import DEAD_QUEUE, SUBMIT_QUEUE, Topology, setup_topology
from tests.support.api import ApiClient
from tests.support.environment import TestEnvironment, create_environment, destroy_environment

REGISTRY = default_registry(demo=True)
LIMITS = RequestLimits(default_retry_limit=3, max_retry_limit=10)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def echo(payload: dict[str, Any]) -> dict[str, Any]:
    return {"task_type": "echo", "payload": payload}


# --- the guard --------------------------------------------------------------------


def test_a_payload_nested_past_the_limit_is_refused_naming_the_limit() -> None:
    with pytest.raises(JsonTooComplex) as caught:
        validate_task_request(echo({"x": nested(252)}), REGISTRY, LIMITS)
    assert caught.value.code == "json_too_complex"
    assert f"nested deeper than {MAX_DEPTH} levels" in caught.value.message
    assert caught.value.errors[0]["field"].startswith("payload.x.0")


def test_wide_objects_and_long_strings_are_refused_naming_the_limit() -> None:
    limits = JsonLimits(max_container_items=3, max_string_chars=5)
    with pytest.raises(JsonTooComplex, match="key-count limit"):
        check_json_shape({"a": 1, "b": 2, "c": 3, "d": 4}, limits)
    with pytest.raises(JsonTooComplex, match="array-length limit"):
        check_json_shape([1, 2, 3, 4], limits)
    with pytest.raises(JsonTooComplex, match="string length limit"):
        check_json_shape({"a": "toolong"}, limits)
    with pytest.raises(JsonTooComplex, match="string length limit"):
        check_json_shape({"toolong": 1}, limits)


def test_checking_a_deep_value_does_not_recurse() -> None:
    with pytest.raises(JsonTooComplex):
        check_json_shape(nested(100_000))  # far past Python's recursion limit


def test_orjson_refuses_what_is_nested_past_its_own_limit_as_bad_json() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        loads_checked(b"[" * 5000 + b"]" * 5000)


def test_a_batch_envelope_holds_what_an_item_may_hold() -> None:
    body = {"tasks": [echo({"x": nested(MAX_DEPTH - 3)})]}
    check_json_shape(body, JsonLimits().envelope(2))
    validate_task_request(body["tasks"][0], REGISTRY, LIMITS, model=BatchItem)


@pytest.mark.parametrize("key", ["a\nb", "a\rb", "a b", "a\x00b", "é"])
def test_a_batch_item_idempotency_key_refuses_control_and_non_ascii_characters(key: str) -> None:
    with pytest.raises(InvalidRequest, match="idempotency_key"):
        validate_task_request({**echo({}), "idempotency_key": key}, REGISTRY, LIMITS, model=BatchItem)


# --- property: accepted means parseable downstream ---------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=40,
)


@st.composite
def deep_values(draw: st.DrawFn) -> Any:
    """Odd values: a random value buried at a random depth (up to far past every parser's limit)."""
    value = draw(json_values)
    for _ in range(draw(st.integers(0, 300))):
        value = {draw(st.text(max_size=3)): value} if draw(st.booleans()) else [value]
    return value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deep_values())
def test_a_payload_the_api_accepts_is_one_the_database_and_the_worker_can_handle(value: Any) -> None:
    try:
        valid = validate_task_request(echo({"v": value}), REGISTRY, LIMITS)
    except InvalidRequest:
        return  # refused with a clear error: fine
    stored = orjson.dumps(valid.stored_payload)  # what the database driver encodes
    assert orjson.loads(stored) == valid.stored_payload
    message = TaskMessage(task_id="t1", task_type="echo", payload=valid.payload, stages=("default",),
                          retry_limit=3, created_at=utcnow())
    assert TaskMessage.parse(message.model_dump_json().encode()).payload == valid.payload


def deep_body(depth: int) -> bytes:
    """A task-message-like body nested `depth` levels (built as text: orjson will not encode past 254)."""
    return b'{"task_id":"t","task_type":"echo","stages":["default"],"payload":{"x":' + b"[" * depth + b"1" \
        + b"]" * depth + b"}}"


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200) | st.integers(0, 1100).map(deep_body))
def test_a_consumer_parse_answers_poison_and_never_anything_else(body: bytes) -> None:
    for parse in (TaskMessage.parse, parse_task_events):
        try:
            parse(body)
        except PoisonMessage:
            pass


def test_a_task_message_nested_past_pydantics_limit_is_poison() -> None:
    body = orjson.dumps({"task_id": "t", "task_type": "echo", "payload": {"x": nested(240)}, "stages": ["default"]})
    with pytest.raises(PoisonMessage):
        TaskMessage.parse(body)


# --- group commit isolates a bad row -------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def private_environment() -> AsyncIterator[TestEnvironment]:
    """This module's own vhost and database. In the session's, the shared fleet's api also
    consumes tm.submit and would answer these messages itself (with its own registry)."""
    env = await create_environment("hj")
    yield env
    await destroy_environment(env)


@pytest.fixture
async def admission(private_environment: TestEnvironment) -> AsyncIterator[Admission]:
    environment = private_environment
    engine = create_engine(environment.postgres, database=environment.database, pool_size=2)
    connection = await aio_pika.connect_robust(environment.amqp_url)
    await setup_topology(connection, Topology(REGISTRY.stages()))
    publisher = await Publisher.open(connection, timeout=5.0)
    try:
        yield Admission(engine, publisher, max_in_flight=100, wait_seconds=5.0)
    finally:
        await publisher.close()
        await connection.close()
        await engine.dispose()


def _valid(i: int) -> ValidTask:
    return validate_task_request(echo({"i": i}), REGISTRY, LIMITS)


def _unencodable() -> ValidTask:
    """A row the database driver cannot encode (what a 252-deep payload did before the guard)."""
    valid = _valid(-1)
    return replace(valid, stored_payload={"x": nested(300)})


async def test_a_row_that_cannot_be_stored_fails_only_its_own_request(admission: Admission) -> None:
    items = [(_valid(i), None) for i in range(6)]
    items[2] = (_unencodable(), None)
    items[5] = (_unencodable(), None)
    results = await admission.admit(items, via="rest", owner="tenant-a")
    assert [type(r) for r in results] == [Admitted, Admitted, InternalError, Admitted, Admitted, InternalError]
    assert all(r.created for r in results if isinstance(r, Admitted))
    assert len({str(r.task["id"]) for r in results if isinstance(r, Admitted)}) == 4


async def test_requests_sharing_a_transaction_with_a_bad_one_still_commit(admission: Admission) -> None:
    good = [admission.admit([(_valid(i), None)], via="rest", owner="tenant-b") for i in range(30)]
    bad = [admission.admit([(_unencodable(), None)], via="rest", owner="tenant-a") for _ in range(3)]
    answers = await asyncio.gather(*good, *bad)
    assert all(isinstance(r, Admitted) for [r] in answers[:30]), answers[:30]
    assert all(isinstance(r, InternalError) for [r] in answers[30:])


# --- tm.submit: whatever validation raises is poison, answered and dead-lettered ------


class _Explosive(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def explode(cls, data: Any) -> Any:
        raise RuntimeError("a validator bug")  # not a ValueError: pydantic lets it through


async def test_tm_submit_dead_letters_and_answers_a_message_whose_validation_raises(
    private_environment: TestEnvironment, admission: Admission
) -> None:
    environment = private_environment
    registry = TaskTypeRegistry([*default_registry(demo=True).values(),
                                 TaskType("explosive", _Explosive, "raises in validation", stages=("other",))])
    engine = create_engine(environment.postgres, database=environment.database, pool_size=1)
    connection = await aio_pika.connect_robust(environment.amqp_url)
    try:
        channel = await connection.channel()
        publisher = await Publisher.open(connection, timeout=5.0)
        checks = SubmissionChecks(engine, CallbackPolicy.build([]), [])
        consumer = SubmitConsumer(channel, admission, publisher, registry, LIMITS, checks,
                                  Topology(registry.stages()))
        await consumer.start()
        replies = await channel.declare_queue(exclusive=True)
        answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await answers.put(orjson.loads(message.body))

        await replies.consume(on_reply, no_ack=True)
        marker = uuid.uuid4().hex
        for body in (orjson.dumps({"task_type": "explosive", "payload": {"m": marker}}),
                     deep_body(252).replace(b'"t"', f'"{marker}"'.encode())):
            await channel.default_exchange.publish(
                aio_pika.Message(body, reply_to=replies.name, correlation_id=marker), routing_key=SUBMIT_QUEUE)
        first, second = await asyncio.wait_for(answers.get(), 10), await asyncio.wait_for(answers.get(), 10)
        assert not first["ok"] and "RuntimeError" in first["error"]["message"]
        assert not second["ok"] and second["error"]["code"] == "json_too_complex"
        assert "nesting limit" in second["error"]["message"]
        dead = await channel.declare_queue(DEAD_QUEUE, passive=True)
        reasons = []
        while (message := await dead.get(no_ack=True, fail=False)) is not None:
            if marker.encode() in message.body:
                reasons.append(str(message.headers[h.DEAD_REASON]))
        assert len(reasons) == 2, reasons  # dead-lettered once each, not requeued
        assert any("nesting limit" in r for r in reasons)
    finally:
        await connection.close()
        await engine.dispose()


# --- over REST --------------------------------------------------------------------


async def test_rest_answers_a_deep_payload_with_422_naming_the_limit(api: ApiClient) -> None:
    status, body = await api.call("POST", "/api/v1/tasks", json=echo({"x": nested(252)}))
    assert status == 422 and body["error"]["code"] == "json_too_complex", body
    assert f"nested deeper than {MAX_DEPTH} levels" in body["error"]["message"]
    status, body = await api.call("POST", "/api/v1/tasks", data=b"[" * 3000 + b"]" * 3000,
                                  headers={"Content-Type": "application/json"})
    assert status in (400, 422), body


async def test_a_batch_with_a_deep_item_is_refused_whole_naming_the_item(api: ApiClient) -> None:
    tasks = [echo({"i": i}) for i in range(3)]
    tasks[1] = echo({"x": nested(252)})
    status, body = await api.call("POST", "/api/v1/tasks/batch", json={"tasks": tasks})
    assert status == 422 and body["error"]["code"] == "json_too_complex", body
    assert body["error"]["details"][0]["field"].startswith("tasks.1.payload.x.0")
    assert f"nested deeper than {MAX_DEPTH} levels" in body["error"]["message"]


async def test_a_batch_item_key_with_cr_lf_is_refused_alone(api: ApiClient) -> None:
    tasks = [echo({"i": 0}), {**echo({}), "idempotency_key": "line\r\nInjected: yes"}]
    status, body = await api.call("POST", "/api/v1/tasks/batch", json={"tasks": tasks})
    assert status == 207, body
    assert [r["ok"] for r in body["results"]] == [True, False]
