"""Logging with loguru: JSON lines in production, readable text in development.

Task fields (`task_id`, `kb_id`, `task_type`, `stage`, `attempt`) travel as
loguru `extra` via `logger.contextualize(...)`, so every line about a task
carries them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
from loguru import logger

from shared.settings import ServiceSettings

TASK_FIELDS = ("task_id", "kb_id", "task_type", "stage", "attempt")


def configure_logging(settings: ServiceSettings, *, process: str) -> None:
    logger.remove()
    logger.configure(extra={"process": process})
    level = settings.log_level.upper()
    if settings.is_production:
        logger.add(_json_sink, level=level, enqueue=False, backtrace=False, diagnose=False)
    else:
        logger.add(
            sys.stderr,
            level=level,
            format=(
                "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
                "<cyan>{extra[process]}</cyan> {message}<dim>{extra[_context]}</dim>"
            ),
            filter=_add_context_text,
            backtrace=False,
            diagnose=False,
        )
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)


def _add_context_text(record: dict[str, Any]) -> bool:
    extra = record["extra"]
    shown = {k: extra[k] for k in TASK_FIELDS if extra.get(k) is not None}
    extra["_context"] = (" " + " ".join(f"{k}={v}" for k, v in shown.items())) if shown else ""
    return True


def _json_sink(message: Any) -> None:
    record = message.record
    line: dict[str, Any] = {
        "ts": record["time"].isoformat(),
        "level": record["level"].name.lower(),
        "process": record["extra"].get("process"),
        "message": record["message"],
        "logger": record["name"],
    }
    for key, value in record["extra"].items():
        if key not in ("process", "_context"):
            line[key] = value
    if record["exception"] is not None:
        exc = record["exception"]
        line["exception"] = f"{exc.type.__name__}: {exc.value}" if exc.type else None
    sys.stderr.write(orjson.dumps(line, default=str).decode() + "\n")
    sys.stderr.flush()


class _InterceptHandler(logging.Handler):
    """Routes stdlib logging (aio-pika, aiohttp, alembic) into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())
