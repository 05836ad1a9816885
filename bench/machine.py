"""What the numbers were measured on: cores, memory, load, versions."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata

import psutil


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):  # noqa: SIM115 - tiny read
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def rabbitmq_version() -> str:
    try:
        out = subprocess.run(["rabbitmqctl", "version"], capture_output=True, text=True, timeout=30, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def describe(postgres_version: str) -> list[str]:
    memory = psutil.virtual_memory().total / 1024**3
    packages = ", ".join(f"{p} {_version(p)}" for p in ("aiohttp", "aio-pika", "SQLAlchemy", "asyncpg", "pydantic",
                                                         "uvloop", "celery", "dramatiq"))
    return [
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        (f"- machine: {os.cpu_count()} cores ({_cpu_model()}), {memory:.1f} GiB memory, "
         f"load average at start {load_average()}"),
        f"- Python {platform.python_version()}, RabbitMQ {rabbitmq_version()}, {postgres_version}",
        f"- packages: {packages}",
    ]
