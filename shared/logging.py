"""Logging with loguru: JSON lines in production, readable text in development.

Task fields (`task_id`, `kb_id`, `task_type`, `stage`, `attempt`) travel as
loguru `extra` via `logger.contextualize(...)`, so every line about a task
carries them; a JSON line about a task always has all five keys (null where a
field does not apply, e.g. a task without a knowledge base). Secrets are
masked in every line (`shared.log_redaction`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

import orjson
from loguru import logger

from shared.log_redaction import Redactor
from shared.settings import ServiceSettings

TASK_FIELDS = ("task_id", "kb_id", "task_type", "stage", "attempt")
_TEXT_FORMAT = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[process]}</cyan> {message}<dim>{extra[_context]}</dim>"
)


def configure_logging(settings: ServiceSettings, *, process: str, secrets: Iterable[str] = ()) -> None:
    """`secrets`: values never to print (`Settings.secret_values()`)."""
    redactor = Redactor(secrets)
    logger.remove()
    logger.configure(extra={"process": process})
    level = settings.log_level.upper()
    if settings.json_logs:
        logger.add(_JsonSink(redactor), level=level, enqueue=False, backtrace=False, diagnose=False)
    else:
        # diagnose=False: variable values in tracebacks could hold secrets.
        logger.add(
            _TextSink(redactor),
            level=level,
            format=_TEXT_FORMAT,
            filter=_add_context_text,  # type: ignore[arg-type]  # loguru's Record is a TypedDict
            colorize=sys.stderr.isatty(),
            backtrace=False,
            diagnose=False,
        )
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)


def _add_context_text(record: dict[str, Any]) -> bool:
    extra = record["extra"]
    shown = {k: extra[k] for k in TASK_FIELDS if extra.get(k) is not None}
    extra["_context"] = (" " + " ".join(f"{k}={v}" for k, v in shown.items())) if shown else ""
    return True


class _TextSink:
    """The formatted line (message, fields and traceback) is masked as a whole."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor

    def __call__(self, message: Any) -> None:
        sys.stderr.write(self._redactor.redact(str(message)))
        sys.stderr.flush()


class _JsonSink:
    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor

    def __call__(self, message: Any) -> None:
        sys.stderr.write(orjson.dumps(json_record(message.record, self._redactor), default=str).decode() + "\n")
        sys.stderr.flush()


def json_record(record: Any, redactor: Redactor) -> dict[str, Any]:
    """One log record as the JSON object written in production."""
    extra = record["extra"]
    line: dict[str, Any] = {
        "ts": record["time"].isoformat(),
        "level": record["level"].name.lower(),
        "process": extra.get("process"),
        "message": redactor.redact(record["message"]),
        "logger": record["name"],
    }
    if any(extra.get(k) is not None for k in TASK_FIELDS):
        for key in TASK_FIELDS:
            line[key] = extra.get(key)
    for key, value in extra.items():
        if key not in ("process", "_context") and key not in line:
            line[key] = redactor.redact_value(value)
    if record["exception"] is not None:
        exc = record["exception"]
        if exc.type is not None:
            line["exception"] = redactor.redact(f"{exc.type.__name__}: {exc.value}")
    return line


class _InterceptHandler(logging.Handler):
    """Routes stdlib logging (aio-pika, aiohttp, alembic) into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())
