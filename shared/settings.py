"""Typed settings, one class per backing concern, composed per process.

Every process builds a `Settings` once at its entry point and passes it down;
no module reads the environment on its own. Variable names follow the seed
design (`PORT`, `POSTGRES_HOST`, `WORKER_POOL_SIZE`, ...).
"""

from __future__ import annotations

import os
import pwd
import ssl
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.task_limits import STOCK_MAX_TASK_TIMEOUT, TIMEOUT_SECONDS_CEILING

# env_ignore_empty: `KB_CALLBACK_URL=` (as docker-compose writes an unset
# `${VAR:-}`) means "not set", not an empty URL.
_ENV = SettingsConfigDict(
    env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True, env_ignore_empty=True
)


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class ServiceSettings(BaseSettings):
    """What every process needs: identity, logging, HTTP ports."""

    model_config = _ENV

    environment: Environment = Field(default=Environment.DEVELOPMENT, alias="ENVIRONMENT")
    log_level: str = Field(default="info", alias="LOG_LEVEL")
    # json | text; unset: JSON lines in production, readable text in development.
    log_format: Literal["json", "text"] | None = Field(default=None, alias="LOG_FORMAT")
    port: int = Field(default=8084, alias="PORT", ge=1, le=65535)
    # Development binds loopback only; production listens on every interface.
    bind_host: str | None = Field(default=None, alias="BIND_HOST")
    # Workers and the dispatcher serve /metrics and /health/* here (0 = off).
    metrics_port: int = Field(default=9100, alias="METRICS_PORT", ge=0, le=65535)
    api_url: str = Field(default="http://127.0.0.1:8084", alias="API_URL")
    # The demonstration task types (test, echo, sleep, fail, benchmark, cpu); unset: on in
    # development, off in production.
    demo_task_types: bool | None = Field(default=None, alias="DEMO_TASK_TYPES")

    @property
    def is_production(self) -> bool:
        return self.environment is Environment.PRODUCTION

    @property
    def demo_task_types_enabled(self) -> bool:
        return self.demo_task_types if self.demo_task_types is not None else not self.is_production

    @property
    def json_logs(self) -> bool:
        return self.log_format == "json" if self.log_format else self.is_production

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
    # The management HTTP API (e.g. http://user:pass@rabbitmq:15672), used by
    # GET /api/v1/stats/queues for unacked counts and rates. Without user-info,
    # the AMQP_URL credentials are used.
    management_url: SecretStr | None = Field(default=None, alias="RABBITMQ_MANAGEMENT_URL")

    @property
    def vhost(self) -> str:
        """The vhost named by AMQP_URL's path ("/" when it names none)."""
        from urllib.parse import unquote, urlsplit

        path = urlsplit(self.url.get_secret_value()).path
        return unquote(path[1:]) if len(path) > 1 else "/"
    # false: processes only verify the topology (passively), for least-privilege users
    # that may not declare it; `taskmgr topology` (an admin user) declares it instead.
    declare_topology: bool = Field(default=True, alias="AMQP_DECLARE_TOPOLOGY")

    @property
    def uses_tls(self) -> bool:
        return self.url.get_secret_value().startswith("amqps://")

    def node_urls(self) -> list[str]:
        """One URL per RabbitMQ node: AMQP_URL may list a cluster's nodes,
        amqp://user:pass@host1:5672,host2:5672,host3:5672/vhost (tried in that order)."""
        urls = []
        for url in _split_nodes(self.url.get_secret_value()):
            if "heartbeat=" not in url:
                url = f"{url}{'&' if '?' in url else '?'}heartbeat={self.heartbeat_seconds}"
            urls.append(url)
        return urls

    def connection_url(self) -> str:
        """The first node's URL (one-shot tools; processes use node_urls())."""
        return self.node_urls()[0]


def _split_nodes(url: str) -> list[str]:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    nodes = hosts.split(",")
    if len(nodes) > 1 and not all(node.strip() for node in nodes):
        # Not a pydantic validator: its error would echo the URL, password included.
        raise ValueError("AMQP_URL lists an empty host: write amqp://user:pass@host1:5672,host2:5672/vhost")
    return [urlunsplit(parts._replace(netloc=f"{userinfo}{at}{node.strip()}")) for node in nodes]


def _host_and_port(item: str, default_port: int) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]:port` or a bare IPv6 address."""
    item = item.strip()
    if not item:
        raise ValueError("POSTGRES_HOST lists an empty host: write h1:5432,h2:5432")
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port = rest.removeprefix(":")
    elif item.count(":") == 1:
        host, _, port = item.partition(":")
    else:
        host, port = item, ""
    if port and not port.isdigit():
        raise ValueError(f"POSTGRES_HOST: {port!r} is not a port number")
    return host, int(port) if port else default_port


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


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

    # One host, or a primary and its standbys: `h1:5432,h2:5432` (a host without a port
    # takes POSTGRES_PORT). With several, connections go to the one that accepts writes.
    host: str | None = Field(default=None, alias="POSTGRES_HOST")
    port: int = Field(default=5432, alias="POSTGRES_PORT", ge=1, le=65535)
    # libpq's target_session_attrs; unset: `read-write` with several hosts, asyncpg's
    # default (`any`, or PGTARGETSESSIONATTRS) with one. Decision 0195.
    target_session_attrs: Literal["any", "primary", "read-write"] | None = Field(
        default=None, alias="POSTGRES_TARGET_SESSION_ATTRS")
    # With several hosts: how long each server has to accept a connection before the next is tried.
    connect_timeout: float = Field(default=5, alias="POSTGRES_CONNECT_TIMEOUT", gt=0, le=300)
    db: str = Field(default="taskmgr", alias="POSTGRES_DB")
    user: str = Field(default="postgres", alias="POSTGRES_USER")
    password: SecretStr | None = Field(default=None, alias="POSTGRES_PASSWORD")
    sslmode: str | None = Field(default=None, alias="POSTGRES_SSLMODE")
    # CA bundle that verifies the server certificate (sslmode verify-ca / verify-full).
    sslrootcert: Path | None = Field(default=None, alias="POSTGRES_SSLROOTCERT")
    pool_size: int = Field(default=10, alias="POSTGRES_POOL_SIZE", ge=1, le=200)
    local_port: int = Field(default=54329, alias="POSTGRES_LOCAL_PORT", ge=1, le=65535)
    local_data_dir: Path = Field(default_factory=_default_local_data_dir, alias="POSTGRES_LOCAL_DATA")
    local_os_user: str = Field(default="postgres", alias="POSTGRES_LOCAL_OS_USER")

    @property
    def uses_local_server(self) -> bool:
        return not self.host

    @property
    def effective_host(self) -> str:
        """The first host (one-host tools such as the bench's DSN; processes use addresses())."""
        return self.addresses()[0][0]

    @property
    def effective_port(self) -> int:
        return self.addresses()[0][1]

    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every server POSTGRES_HOST lists, in the order they are tried."""
        if not self.host:
            return [("127.0.0.1", self.local_port)]
        return [_host_and_port(item, self.port) for item in self.host.split(",")]

    def session_attrs(self) -> str | None:
        """The target_session_attrs connections ask for (None: the driver's default)."""
        if self.target_session_attrs is None and len(self.addresses()) > 1:
            return "read-write"
        return self.target_session_attrs

    def sqlalchemy_url(self, database: str | None = None) -> str:
        from sqlalchemy.engine import URL

        # With a CA bundle the engine passes an SSLContext instead (see ssl_context()).
        query: dict[str, str | tuple[str, ...]] = {"ssl": self.sslmode} if self.sslmode and not self.sslrootcert else {}
        addresses = self.addresses()
        host: str | None = addresses[0][0]
        port: int | None = addresses[0][1]
        if len(addresses) > 1:
            # SQLAlchemy's asyncpg dialect: one `host=h:p` query parameter per server.
            query["host"] = tuple(f"{_url_host(h)}:{p}" for h, p in addresses)
            host = port = None
        if attrs := self.session_attrs():
            query["target_session_attrs"] = attrs
        return URL.create(
            "postgresql+asyncpg",
            username=self.user,
            password=self.password.get_secret_value() if self.password else None,
            host=host,
            port=port,
            database=database or self.db,
            query=query,
        ).render_as_string(hide_password=False)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A context verifying the server against POSTGRES_SSLROOTCERT (hostname too
        unless sslmode is verify-ca); None when no CA bundle is configured."""
        if not self.sslrootcert:
            return None
        context = ssl.create_default_context(cafile=str(self.sslrootcert))
        context.check_hostname = self.sslmode != "verify-ca"
        return context

    def describe(self) -> str:
        """Where we connect, without the password (safe to log)."""
        origin = "local pgserver" if self.uses_local_server else "external"
        hosts = ",".join(f"{_url_host(h)}:{p}" for h, p in self.addresses())
        attrs = f", {self.session_attrs()}" if self.session_attrs() else ""
        return f"{self.user}@{hosts}/{self.db} ({origin}{attrs})"

    @field_validator("host")
    @classmethod
    def _hosts_parse(cls, value: str | None) -> str | None:
        items = value.split(",") if value else []
        hosts = [_host_and_port(item, 5432)[0] for item in items]
        if len(hosts) > 1 and any(":" in host for host in hosts):
            # SQLAlchemy's multi-host URL splits `host:port` on the colon.
            raise ValueError("POSTGRES_HOST: name the servers of a list (no IPv6 literals), h1:5432,h2:5432")
        return value

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
    # RabbitMQ closes a channel holding a message unacked past consumer_timeout: attempts
    # must end before it. Default: what a stock broker allows (docs/task-length-limits.md).
    max_task_timeout_seconds: float = Field(default=STOCK_MAX_TASK_TIMEOUT, alias="MAX_TASK_TIMEOUT", gt=0,
                                            le=TIMEOUT_SECONDS_CEILING)
    # aiohttp closes a connection that completed no request in this long: an idle keep-alive,
    # and also one still sending its headers (a request starts only once they are complete).
    keepalive_timeout_seconds: float = Field(default=15, alias="API_KEEPALIVE_TIMEOUT", gt=0)
    # A JSON body must arrive within this; an upload may stall this long between chunks (408).
    body_timeout_seconds: float = Field(default=30, alias="API_BODY_TIMEOUT", gt=0)
    # Fairness between knowledge bases (decision 0161): under backlog, a first stage's tasks are
    # published through a window of this many, granted round-robin across kb_id within a priority.
    fair_scheduling: bool = Field(default=False, alias="FAIR_SCHEDULING")
    fair_window: int = Field(default=64, alias="FAIR_WINDOW", ge=1, le=1000)


def _split_list(value: object) -> object:
    """Comma- or space-separated text (or a JSON list) into a list."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part for part in text.replace(",", " ").split() if part]
    return value


class AuthSettings(BaseSettings):
    """Who may call the api, and how often (API keys, scopes, token buckets)."""

    model_config = _ENV

    # Unset: true in production, false in development (then the api listens on loopback only).
    auth_required: bool | None = Field(default=None, alias="AUTH_REQUIRED")
    # A verified key is trusted this long before it is looked up again (revocations take this long).
    api_key_cache_seconds: float = Field(default=5.0, alias="API_KEY_CACHE_SECONDS", ge=0)
    # When set, /metrics (api, workers, dispatcher) needs `Authorization: Bearer <METRICS_TOKEN>`.
    metrics_token: SecretStr | None = Field(default=None, alias="METRICS_TOKEN")
    # Token bucket per API key (per client address when auth is off); 0 turns it off.
    rate_limit_per_second: float = Field(default=100.0, alias="RATE_LIMIT_PER_SECOND", ge=0)
    rate_limit_burst: int = Field(default=200, alias="RATE_LIMIT_BURST", ge=1)
    # Token bucket per kb_id, charged one token per task submitted for it; 0 turns it off.
    kb_rate_limit_per_second: float = Field(default=50.0, alias="KB_RATE_LIMIT_PER_SECOND", ge=0)
    kb_rate_limit_burst: int = Field(default=1000, alias="KB_RATE_LIMIT_BURST", ge=1)
    # Token bucket per client address, paid only by key lookups that find no key (429 when empty).
    auth_failure_rate_per_second: float = Field(default=1.0, alias="AUTH_FAILURE_RATE_PER_SECOND", ge=0)
    auth_failure_burst: int = Field(default=30, alias="AUTH_FAILURE_BURST", ge=1)
    # The key `taskmgr submit|status|cancel|dlq` send to the api.
    cli_api_key: SecretStr | None = Field(default=None, alias="TASKMGR_API_KEY")

    def required(self, environment: Environment) -> bool:
        if self.auth_required is None:
            return environment is Environment.PRODUCTION
        return self.auth_required


class CallbackSettings(BaseSettings):
    model_config = _ENV

    kb_callback_url: str | None = Field(default=None, alias="KB_CALLBACK_URL")
    # Several secrets separated by spaces sign with each (rotation).
    callback_secret: SecretStr | None = Field(default=None, alias="CALLBACK_SECRET")
    # Read when CALLBACK_SECRET is unset; `taskmgr bootstrap` generates it if missing.
    callback_secret_file: Path | None = Field(default=None, alias="CALLBACK_SECRET_FILE")
    timeout_seconds: float = Field(default=15, alias="CALLBACK_TIMEOUT", gt=0)
    max_attempts: int = Field(default=12, alias="CALLBACK_MAX_ATTEMPTS", ge=1)
    backoff_base_seconds: float = Field(default=1.0, alias="CALLBACK_BACKOFF_BASE", gt=0)
    backoff_max_seconds: float = Field(default=600, alias="CALLBACK_BACKOFF_MAX", gt=0)
    concurrency: int = Field(default=32, alias="CALLBACK_CONCURRENCY", ge=1)
    # Hosts (names, IP literals or CIDR ranges) callbacks may reach even on loopback,
    # private, link-local or other non-public addresses, on any port. Unset: localhost
    # in development, none in production. KB_CALLBACK_URL's host is always allowed.
    allowed_hosts: Annotated[list[str] | None, NoDecode] = Field(default=None, alias="CALLBACK_ALLOWED_HOSTS")
    # Ports callbacks may use besides 80 (http) and 443 (https).
    allowed_ports: Annotated[list[int], NoDecode] = Field(default_factory=list, alias="CALLBACK_ALLOWED_PORTS")

    @field_validator("allowed_hosts", "allowed_ports", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        # "none" says "no allowlist" explicitly (an empty variable means unset).
        if isinstance(value, str) and value.strip().lower() == "none":
            return []
        return _split_list(value)

    def effective_allowed_hosts(self, environment: Environment) -> list[str]:
        if self.allowed_hosts is not None:
            hosts = list(self.allowed_hosts)
        elif environment is Environment.PRODUCTION:
            hosts = []
        else:
            hosts = ["localhost", "127.0.0.1", "::1"]
        if self.kb_callback_url:
            from urllib.parse import urlsplit

            configured = urlsplit(self.kb_callback_url).hostname
            if configured:  # operator configuration, not client input
                hosts.append(configured)
        return hosts

    def secrets(self) -> list[str]:
        if self.callback_secret is not None:
            return self.callback_secret.get_secret_value().split()
        if self.callback_secret_file is not None and self.callback_secret_file.is_file():
            return self.callback_secret_file.read_text().split()
        return []


def _default_upload_roots() -> list[Path]:
    return [Path("data/uploads").resolve()]


class FileSettings(BaseSettings):
    """Where task files may come from (`file_path`, `file_ref`), and how big they may be."""

    model_config = _ENV

    # Paths (absolute after resolution) a task may read; the first also holds uploads.
    # Set as a JSON list or os.pathsep-separated: UPLOAD_ROOTS=/srv/uploads:/mnt/shared
    upload_roots: Annotated[list[Path], NoDecode] = Field(default_factory=_default_upload_roots, alias="UPLOAD_ROOTS")
    max_file_bytes: int = Field(default=100 * 1024 * 1024, alias="MAX_FILE_BYTES", ge=1)
    # An upload is deleted this long after the last task using it ended ...
    upload_retention_seconds: float = Field(default=24 * 3600, alias="UPLOAD_RETENTION_SECONDS", ge=0)
    # ... or this long after it was uploaded when no task ever used it.
    upload_unused_ttl_seconds: float = Field(default=24 * 3600, alias="UPLOAD_UNUSED_TTL_SECONDS", gt=0)
    # Per tenant (API key owner): uploads kept at once, and their bytes (413 beyond) ...
    upload_quota_files: int = Field(default=1000, alias="UPLOAD_QUOTA_FILES", ge=1)
    upload_quota_bytes: int = Field(default=10 * 1024**3, alias="UPLOAD_QUOTA_BYTES", ge=1)
    # ... and the free space the upload store's disk keeps whatever the quotas say (507 below).
    upload_min_free_bytes: int = Field(default=1024**3, alias="UPLOAD_MIN_FREE_BYTES", ge=0)

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


class EmbeddingBackend(StrEnum):
    LOCAL = "local"  # sentence-transformers on this host's CPU, offline
    OPENAI = "openai"  # any OpenAI-compatible /v1/embeddings endpoint


class EmbeddingSettings(BaseSettings):
    """How the embed stage turns chunks (and search queries) into vectors."""

    model_config = _ENV

    backend: EmbeddingBackend = Field(default=EmbeddingBackend.LOCAL, alias="EMBEDDING_BACKEND")
    # local: "use-multilingual-v3" (default, numpy, reads Chinese; decision 0111), "multilingual-e5-small",
    # "all-MiniLM-L6-v2" (torch, English only), or a sentence-transformers model directory;
    # openai: the model name the endpoint serves.
    model: str = Field(default="use-multilingual-v3", alias="EMBEDDING_MODEL", min_length=1)
    batch_size: int = Field(default=32, alias="EMBEDDING_BATCH_SIZE", ge=1, le=2048)
    # Batches in flight per embed worker (local: 1 uses every core through torch's own threads).
    concurrency: int = Field(default=1, alias="EMBEDDING_CONCURRENCY", ge=1, le=64)
    # torch intra-op threads for the local backend (0 = torch's default, one per core).
    threads: int = Field(default=0, alias="EMBEDDING_THREADS", ge=0, le=256)
    base_url: str | None = Field(default=None, alias="EMBEDDING_BASE_URL")  # e.g. https://api.openai.com/v1
    api_key: SecretStr | None = Field(default=None, alias="EMBEDDING_API_KEY")
    # openai: ask for this many dimensions (models that support it); None = the model's own.
    dimensions: int | None = Field(default=None, alias="EMBEDDING_DIMENSIONS", ge=1, le=2000)
    timeout_seconds: float = Field(default=60, alias="EMBEDDING_TIMEOUT", gt=0)
    max_retries: int = Field(default=5, alias="EMBEDDING_MAX_RETRIES", ge=0, le=20)
    # Vectors are cached by (model, text hash): re-processing unchanged text embeds nothing.
    cache: bool = Field(default=True, alias="EMBEDDING_CACHE")
    cache_ttl_days: float = Field(default=30, alias="EMBEDDING_CACHE_TTL_DAYS", gt=0)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL, e.g. https://api.openai.com/v1")
        return value.rstrip("/") if value else value

    @property
    def cache_key(self) -> str:
        """The model a cached vector belongs to: same key, same vector for the same text."""
        suffix = f"@{self.dimensions}" if self.dimensions else ""
        return f"{self.backend.value}:{self.model}{suffix}"


class PipelineSettings(BaseSettings):
    """The document pipeline's limits and housekeeping."""

    model_config = _ENV

    # Text extracted from one document; beyond it the task fails with the reason.
    max_document_chars: int = Field(default=100_000_000, alias="MAX_DOCUMENT_CHARS", ge=1000)
    # Intermediate data of tasks that never finished (crashed, cancelled while queued) is dropped after this.
    staging_ttl_hours: float = Field(default=24, alias="PIPELINE_STAGING_TTL_HOURS", gt=0)
    # OCR of image uploads and of PDF pages without a text layer (docs/ocr-and-legacy-word.md).
    ocr_enabled: bool = Field(default=True, alias="OCR_ENABLED")
    ocr_languages: str = Field(default="chi_sim+chi_tra+eng", alias="OCR_LANGUAGES",
                               pattern=r"^[A-Za-z_]+(\+[A-Za-z_]+)*$")
    tesseract_cmd: str = Field(default="tesseract", alias="TESSERACT_CMD", min_length=1)
    antiword_cmd: str = Field(default="antiword", alias="ANTIWORD_CMD", min_length=1)
    # A PDF longer than this is parsed and embedded in page-range shards that any free worker runs
    # (docs/documents.md; 0 turns sharding off). A payload's `shard_pages` overrides it.
    shard_pages: int = Field(default=50, alias="SHARD_PAGES", ge=0)


class SearchSettings(BaseSettings):
    model_config = _ENV

    # How long the api waits for an embed worker to embed a query before answering keyword-only.
    embed_timeout_seconds: float = Field(default=5, alias="SEARCH_EMBED_TIMEOUT", gt=0, le=120)
    max_top_k: int = Field(default=50, alias="SEARCH_MAX_TOP_K", ge=1, le=1000)
    # Candidates the HNSW index visits per query (pgvector hnsw.ef_search); more = better recall, slower.
    hnsw_ef_search: int = Field(default=100, alias="SEARCH_HNSW_EF_SEARCH", ge=10, le=1000)


class DispatcherSettings(BaseSettings):
    model_config = _ENV

    batch_max_events: int = Field(default=500, alias="DISPATCHER_BATCH_MAX", ge=1)
    # Under load only, how long a batch may linger to grow (an idle dispatcher writes at once).
    batch_max_wait_seconds: float = Field(default=0.02, alias="DISPATCHER_BATCH_WAIT", ge=0)
    # Parents' results a released task carries in context.parents; above this only their statuses.
    dependency_context_max_bytes: int = Field(default=512 * 1024, alias="DEPENDENCY_CONTEXT_MAX_BYTES", ge=1024)
    # How often the release loop looks for due delayed tasks: bounds their lateness (decision 0090).
    scheduler_poll_seconds: float = Field(default=0.25, alias="SCHEDULER_POLL_SECONDS", gt=0, le=60)
    # A periodic firing older than this when a dispatcher gets to it was missed (catch_up decides).
    schedule_misfire_grace_seconds: float = Field(default=10, alias="SCHEDULE_MISFIRE_GRACE_SECONDS", gt=0)
    # A queued/processing task silent this long, with its stage queue empty, lost its
    # message (a purged queue) and is failed into tm.dead; 0 turns the reconciler off.
    # Keep it above MAX_TASK_TIMEOUT plus the longest retry delay.
    reconciler_stale_seconds: float = Field(default=3600, alias="RECONCILER_STALE_SECONDS", ge=0)
    reconciler_interval_seconds: float = Field(default=60, alias="RECONCILER_INTERVAL_SECONDS", gt=0)


class RetentionSettings(BaseSettings):
    """How long finished work is kept. The dispatcher's retention sweep removes task rows
    (with their callbacks and dependency edges) and uploads (UPLOAD_RETENTION_SECONDS,
    UPLOAD_UNUSED_TTL_SECONDS) once these have passed; docs/operations.md says what is kept longer."""

    model_config = _ENV

    # A finished task's row (and its callback rows) is deleted this long after it ended.
    task_retention_seconds: float = Field(default=30 * 86400, alias="TASK_RETENTION_SECONDS", ge=0)
    # How often the sweep runs (it was UPLOAD_SWEEP_INTERVAL when only the api swept uploads).
    sweep_interval_seconds: float = Field(default=60, alias="RETENTION_SWEEP_INTERVAL", gt=0)


class EventStreamSettings(BaseSettings):
    """`GET /api/v1/events` and the event log behind it (decision 0131)."""

    model_config = _ENV

    # The dispatcher keeps events this long: the window a stream can resume in.
    log_retention_seconds: float = Field(default=3600, alias="EVENT_LOG_RETENTION", gt=0)
    # How often the api reads new events from the log while a stream is open.
    poll_seconds: float = Field(default=0.2, alias="EVENT_STREAM_POLL", gt=0)
    heartbeat_seconds: float = Field(default=15, alias="EVENT_STREAM_HEARTBEAT", gt=0)
    # Events waiting for one client; a client that falls further behind is closed.
    buffer: int = Field(default=1000, alias="EVENT_STREAM_BUFFER", ge=1)
    max_streams: int = Field(default=500, alias="EVENT_STREAM_MAX_CONNECTIONS", ge=1)


class Settings(BaseModel):
    """Everything one process needs, built once at its entry point."""

    model_config = {"frozen": True}

    service: ServiceSettings = Field(default_factory=ServiceSettings)
    amqp: AmqpSettings = Field(default_factory=AmqpSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    callbacks: CallbackSettings = Field(default_factory=CallbackSettings)
    dispatcher: DispatcherSettings = Field(default_factory=DispatcherSettings)
    files: FileSettings = Field(default_factory=FileSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    events: EventStreamSettings = Field(default_factory=EventStreamSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    @model_validator(mode="after")
    def _kb_burst_fits_a_batch(self) -> Settings:
        # A batch for one kb that can never fit in its bucket would be refused forever.
        if self.auth.kb_rate_limit_per_second and self.auth.kb_rate_limit_burst < self.api.max_batch_size:
            raise ValueError(
                f"KB_RATE_LIMIT_BURST ({self.auth.kb_rate_limit_burst}) must be at least "
                f"MAX_BATCH_SIZE ({self.api.max_batch_size})"
            )
        return self

    @property
    def auth_required(self) -> bool:
        return self.auth.required(self.service.environment)

    @classmethod
    def from_env(cls) -> Settings:
        return cls()

    def secret_values(self) -> list[str]:
        """Every `SecretStr` setting's value, for masking in logs (shared.log_redaction)."""
        found = []
        for name in type(self).model_fields:
            group = getattr(self, name)
            for field_name in type(group).model_fields:
                value = getattr(group, field_name)
                if isinstance(value, SecretStr):
                    found.append(value.get_secret_value())
        found.extend(self.callbacks.secrets())  # also those read from CALLBACK_SECRET_FILE
        return found
