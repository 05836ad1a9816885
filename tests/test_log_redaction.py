"""Secrets never reach a log line; JSON lines about a task carry its fields."""

from __future__ import annotations

import io
import sys

import orjson
import pytest
from loguru import logger

from shared.log_redaction import MASK, Redactor
from shared.logging import TASK_FIELDS, configure_logging
from shared.settings import (
    AmqpSettings,
    CallbackSettings,
    PostgresSettings,
    ServiceSettings,
    Settings,
)

pytestmark = pytest.mark.fast  # no broker, database or child process (make test-fast)


def test_configured_secrets_are_masked_wherever_they_appear() -> None:
    redactor = Redactor(["s3cr3t-callback old-rotated-secret", "pg-Pass%word", "amqp://svc:amqp%2Fpw@mq:5672/"])
    text = ("signing with s3cr3t-callback and old-rotated-secret; db said: auth failed for pg-Pass%word; "
            "decoded amqp/pw and raw amqp%2Fpw")
    redacted = redactor.redact(text)
    for secret in ("s3cr3t-callback", "old-rotated-secret", "pg-Pass%word", "amqp/pw", "amqp%2Fpw"):
        assert secret not in redacted
    assert redacted.count(MASK) == 5


def test_unknown_url_credentials_and_key_value_secrets_are_masked_by_pattern() -> None:
    redactor = Redactor()
    line = ("POST to https://kb:hunter22@kb.internal/hook failed; "
            "retry with api_key=sk-live-123 and Authorization: Bearer tok.abc.def; password: 'x'")
    redacted = redactor.redact(line)
    assert "hunter22" not in redacted and "sk-live-123" not in redacted and "tok.abc.def" not in redacted
    assert "https://kb:***@kb.internal/hook" in redacted
    assert "password: '***'" in redacted


def test_short_values_are_not_masked_everywhere_but_text_without_secrets_is_untouched() -> None:
    redactor = Redactor(["ab"])
    assert redactor.redact("a table about cabs") == "a table about cabs"


def test_settings_list_every_secret_value() -> None:
    settings = Settings(
        amqp=AmqpSettings(AMQP_URL="amqp://u:amqp-pw@h/", RABBITMQ_MANAGEMENT_URL="http://m:mgmt-pw@h:15672"),
        postgres=PostgresSettings(POSTGRES_PASSWORD="pg-pw", POSTGRES_LOCAL_OS_USER="root"),
        callbacks=CallbackSettings(CALLBACK_SECRET="cb-1 cb-2"),
    )
    values = settings.secret_values()
    assert {"amqp://u:amqp-pw@h/", "http://m:mgmt-pw@h:15672", "pg-pw", "cb-1 cb-2"} <= set(values)


def _restore_default_logging() -> None:
    logger.remove()
    logger.add(sys.stderr)


def _capture_json_line(secrets: list[str], emit) -> dict:  # type: ignore[no-untyped-def, type-arg]
    stream = io.StringIO()
    real = sys.stderr
    sys.stderr = stream
    try:
        configure_logging(ServiceSettings(ENVIRONMENT="production"), process="test", secrets=secrets)
        emit()
    finally:
        sys.stderr = real
        _restore_default_logging()
    [line] = stream.getvalue().splitlines()
    return orjson.loads(line)  # type: ignore[no-any-return]


def test_a_json_line_about_a_task_has_all_task_fields_and_no_secret() -> None:
    def emit() -> None:
        with logger.contextualize(task_id="t-1", kb_id=None, task_type="echo", stage="default", attempt=2):
            try:
                raise ConnectionError("login failed for callback-secret-value")
            except ConnectionError:
                logger.exception("callback to http://kb:pw123456@kb/hook failed with callback-secret-value")

    line = _capture_json_line(["callback-secret-value"], emit)
    assert {k: line[k] for k in TASK_FIELDS} == {
        "task_id": "t-1", "kb_id": None, "task_type": "echo", "stage": "default", "attempt": 2}
    assert line["level"] == "error" and line["process"] == "test"
    text = orjson.dumps(line).decode()
    assert "callback-secret-value" not in text and "pw123456" not in text
    assert line["exception"] == f"ConnectionError: login failed for {MASK}"


def test_a_json_line_not_about_a_task_has_no_task_fields() -> None:
    line = _capture_json_line([], lambda: logger.info("consuming"))
    assert not set(TASK_FIELDS) & set(line)


def test_development_text_lines_are_masked_too(capsys) -> None:  # type: ignore[no-untyped-def]
    configure_logging(ServiceSettings(ENVIRONMENT="development"), process="test", secrets=["dev-secret-1"])
    try:
        logger.warning("using dev-secret-1 for amqp://u:pw-in-url@h/")
    finally:
        _restore_default_logging()
    err = capsys.readouterr().err
    assert "dev-secret-1" not in err and "pw-in-url" not in err and MASK in err
