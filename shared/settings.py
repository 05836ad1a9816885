"""Typed settings, one class per backing concern, composed per process.

Every process builds a `Settings` once at its entry point and passes it down;
no module reads the environment on its own. Variable names follow the seed
design (`PORT`, `POSTGRES_HOST`, `WORKER_POOL_SIZE`, ...).
"""

from __future__ import annotations

import os
import pwd
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_ENV = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True)


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class ServiceSettings(BaseSettings):
    """What every process needs: identity, logging, HTTP ports."""

    model_config = _ENV

    environment: Environment = Field(default=Environment.DEVELOPMENT, alias="ENVIRONMENT")
    log_level: str = Field(default="info", alias="LOG_LEVEL")
    port: int = Field(default=8084, alias="PORT", ge=1, le=65535)
    # Development binds loopback only; production listens on every interface.
    bind_host: str | None = Field(default=None, alias="BIND_HOST")
    # Workers and the dispatcher serve /metrics and /health/* here (0 = off).
    metrics_port: int = Field(default=9100, alias="METRICS_PORT", ge=0, le=65535)
    api_url: str = Field(default="http://127.0.0.1:8084", alias="API_URL")

    @property
    def is_production(self) -> bool:
        return self.environment is Environment.PRODUCTION

    @property
    def http_host(self) -> str:
        if self.bind_host:
            return self.bind_host
        return "0.0.0.0" if self.is_production else "127.0.0.1"


class AmqpSettings(BaseSettings):
    model_config = _ENV

    url: SecretStr = Field(default=SecretStr("amqp://guest:guest@localhost:5672/"), alias="AMQP_URL")
    heartbeat_seconds: int = Field(default=30, alias="AMQP_HEARTBEAT", ge=0)
    # Stage queues refuse publishes past this depth (backpressure, not loss).
    stage_queue_max_length: int = Field(default=1_000_000, alias="STAGE_QUEUE_MAX_LENGTH", ge=1)

    def connection_url(self) -> str:
        url = self.url.get_secret_value()
        if "heartbeat=" in url:
            return url
        return f"{url}{'&' if '?' in url else '?'}heartbeat={self.heartbeat_seconds}"


def _default_local_data_dir() -> Path:
    # PostgreSQL refuses to run as root, so as root the cluster belongs to the
    # `postgres` system user and lives where that user can reach it.
    if os.geteuid() == 0:
        return Path("/var/lib/taskmgr/postgres")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "taskmgr" / "postgres"


class PostgresSettings(BaseSettings):
    """Where task state lives.

    With no `POSTGRES_HOST`, the project runs its own PostgreSQL 16 with
    pgvector (the `pgserver` wheel) on 127.0.0.1:`POSTGRES_LOCAL_PORT`.
    """

    model_config = _ENV

    host: str | None = Field(default=None, alias="POSTGRES_HOST")
    port: int = Field(default=5432, alias="POSTGRES_PORT", ge=1, le=65535)
    db: str = Field(default="taskmgr", alias="POSTGRES_DB")
    user: str = Field(default="postgres", alias="POSTGRES_USER")
    password: SecretStr | None = Field(default=None, alias="POSTGRES_PASSWORD")
    sslmode: str | None = Field(default=None, alias="POSTGRES_SSLMODE")
    pool_size: int = Field(default=10, alias="POSTGRES_POOL_SIZE", ge=1, le=200)
    local_port: int = Field(default=54329, alias="POSTGRES_LOCAL_PORT", ge=1, le=65535)
    local_data_dir: Path = Field(default_factory=_default_local_data_dir, alias="POSTGRES_LOCAL_DATA")
    local_os_user: str = Field(default="postgres", alias="POSTGRES_LOCAL_OS_USER")

    @property
    def uses_local_server(self) -> bool:
        return not self.host

    @property
    def effective_host(self) -> str:
        return self.host or "127.0.0.1"

    @property
    def effective_port(self) -> int:
        return self.port if self.host else self.local_port

    def sqlalchemy_url(self, database: str | None = None) -> str:
        from sqlalchemy.engine import URL

        query = {"ssl": self.sslmode} if self.sslmode else {}
        return URL.create(
            "postgresql+asyncpg",
            username=self.user,
            password=self.password.get_secret_value() if self.password else None,
            host=self.effective_host,
            port=self.effective_port,
            database=database or self.db,
            query=query,
        ).render_as_string(hide_password=False)

    def describe(self) -> str:
        """Where we connect, without the password (safe to log)."""
        origin = "local pgserver" if self.uses_local_server else "external"
        return f"{self.user}@{self.effective_host}:{self.effective_port}/{self.db} ({origin})"

    @field_validator("local_os_user")
    @classmethod
    def _os_user_exists_when_root(cls, value: str) -> str:
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(value)
            except KeyError:
                raise ValueError(f"OS user {value!r} does not exist; set POSTGRES_LOCAL_OS_USER") from None
        return value


class WorkerSettings(BaseSettings):
    model_config = _ENV

    # Task slots per worker process; also its prefetch, so priorities still reorder work.
    worker_pool_size: int = Field(default=10, alias="WORKER_POOL_SIZE", ge=1, le=1000)
    # Seconds per attempt unless the task sets its own timeout.
    task_timeout: float = Field(default=300, alias="TASK_TIMEOUT", gt=0)
    shutdown_grace_seconds: float = Field(default=30, alias="SHUTDOWN_GRACE_SECONDS", ge=0)
    heartbeat_interval_seconds: float = Field(default=5, alias="WORKER_HEARTBEAT_INTERVAL", gt=0)
    # A task that finishes within this long emits one event, not started+completed.
    started_event_delay_seconds: float = Field(default=0.2, alias="STARTED_EVENT_DELAY", ge=0)
    # Child processes for CPU-bound steps (parsing); started on first use.
    cpu_workers: int = Field(default=2, alias="CPU_WORKERS", ge=1, le=64)


class RetrySettings(BaseSettings):
    model_config = _ENV

    max_retry_attempts: int = Field(default=3, alias="MAX_RETRY_ATTEMPTS", ge=0, le=50)
    retry_backoff_factor: float = Field(default=2.0, alias="RETRY_BACKOFF_FACTOR", ge=1.0, le=10.0)
    retry_backoff_base_seconds: float = Field(default=1.0, alias="RETRY_BACKOFF_BASE", gt=0)
    # After this many crash redeliveries a message is dead-lettered, not retried forever.
    max_redeliveries: int = Field(default=5, alias="MAX_REDELIVERIES", ge=1)


class ApiSettings(BaseSettings):
    model_config = _ENV

    # Tasks being admitted at once (DB write + broker confirm); more wait, then get 503.
    max_concurrent_tasks: int = Field(default=50, alias="MAX_CONCURRENT_TASKS", ge=1)
    admission_wait_seconds: float = Field(default=2.0, alias="ADMISSION_WAIT_SECONDS", gt=0)
    max_body_bytes: int = Field(default=1_048_576, alias="MAX_BODY_BYTES", ge=1024)
    max_batch_size: int = Field(default=500, alias="MAX_BATCH_SIZE", ge=1)
    max_page_size: int = Field(default=200, alias="MAX_PAGE_SIZE", ge=1)
    max_retry_limit: int = Field(default=20, alias="MAX_RETRY_LIMIT", ge=0)


class CallbackSettings(BaseSettings):
    model_config = _ENV

    kb_callback_url: str | None = Field(default=None, alias="KB_CALLBACK_URL")
    # Several secrets separated by spaces sign with each (rotation).
    callback_secret: SecretStr | None = Field(default=None, alias="CALLBACK_SECRET")
    timeout_seconds: float = Field(default=15, alias="CALLBACK_TIMEOUT", gt=0)
    max_attempts: int = Field(default=12, alias="CALLBACK_MAX_ATTEMPTS", ge=1)
    backoff_base_seconds: float = Field(default=1.0, alias="CALLBACK_BACKOFF_BASE", gt=0)
    backoff_max_seconds: float = Field(default=600, alias="CALLBACK_BACKOFF_MAX", gt=0)
    concurrency: int = Field(default=32, alias="CALLBACK_CONCURRENCY", ge=1)

    def secrets(self) -> list[str]:
        if self.callback_secret is None:
            return []
        return self.callback_secret.get_secret_value().split()


def _default_upload_roots() -> list[Path]:
    return [Path("data/uploads").resolve()]


class FileSettings(BaseSettings):
    """Where task files may come from (`file_path`, `file_ref`), and how big they may be."""

    model_config = _ENV

    # Paths (absolute after resolution) a task may read; the first also holds uploads.
    # Set as a JSON list or os.pathsep-separated: UPLOAD_ROOTS=/srv/uploads:/mnt/shared
    upload_roots: Annotated[list[Path], NoDecode] = Field(default_factory=_default_upload_roots, alias="UPLOAD_ROOTS")
    max_file_bytes: int = Field(default=100 * 1024 * 1024, alias="MAX_FILE_BYTES", ge=1)

    @field_validator("upload_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part for part in text.split(os.pathsep) if part]
        return value

    @field_validator("upload_roots")
    @classmethod
    def _absolute_roots(cls, roots: list[Path]) -> list[Path]:
        if not roots:
            raise ValueError("at least one upload root is needed")
        return [root.expanduser().resolve() for root in roots]

    @property
    def upload_store_root(self) -> Path:
        return self.upload_roots[0] / ".uploads"


class DispatcherSettings(BaseSettings):
    model_config = _ENV

    batch_max_events: int = Field(default=500, alias="DISPATCHER_BATCH_MAX", ge=1)
    # Under load only, how long a batch may linger to grow (an idle dispatcher writes at once).
    batch_max_wait_seconds: float = Field(default=0.02, alias="DISPATCHER_BATCH_WAIT", ge=0)


class Settings(BaseModel):
    """Everything one process needs, built once at its entry point."""

    model_config = {"frozen": True}

    service: Annotated[ServiceSettings, Field(default_factory=ServiceSettings)]
    amqp: Annotated[AmqpSettings, Field(default_factory=AmqpSettings)]
    postgres: Annotated[PostgresSettings, Field(default_factory=PostgresSettings)]
    worker: Annotated[WorkerSettings, Field(default_factory=WorkerSettings)]
    retry: Annotated[RetrySettings, Field(default_factory=RetrySettings)]
    api: Annotated[ApiSettings, Field(default_factory=ApiSettings)]
    callbacks: Annotated[CallbackSettings, Field(default_factory=CallbackSettings)]
    dispatcher: Annotated[DispatcherSettings, Field(default_factory=DispatcherSettings)]
    files: Annotated[FileSettings, Field(default_factory=FileSettings)]

    @classmethod
    def from_env(cls) -> Settings:
        return cls()
