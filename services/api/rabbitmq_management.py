"""The few calls we make to RabbitMQ's management HTTP API (when
RABBITMQ_MANAGEMENT_URL is set): queue figures that AMQP cannot give
(unacked counts, publish and deliver rates)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aiohttp

from services.api.queue_monitor import QueueFigures
from shared.settings import AmqpSettings

TIMEOUT_SECONDS = 2.0
_COLUMNS = ",".join((  # noqa: FLY002 - one column per line reads better
    "name", "messages_ready", "messages_unacknowledged", "consumers", "policy",
    "message_stats.publish_details.rate", "message_stats.deliver_get_details.rate",
    "message_stats.ack_details.rate",
))


class ManagementApiError(Exception):
    """The management API did not answer usefully; the message says why (no credentials)."""


class ManagementApi:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, *, user: str, password: str, vhost: str) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._vhost = vhost
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}"}

    @classmethod
    def from_settings(cls, session: aiohttp.ClientSession, settings: AmqpSettings) -> ManagementApi | None:
        if settings.management_url is None:
            return None
        url = urlsplit(settings.management_url.get_secret_value())
        amqp = urlsplit(settings.url.get_secret_value())
        # Credentials from the management URL, else those of AMQP_URL.
        source = url if url.username else amqp
        base = urlunsplit((url.scheme, url.netloc.rsplit("@", 1)[-1], url.path, "", ""))
        return cls(session, base, user=unquote(source.username or "guest"),
                   password=unquote(source.password or "guest"), vhost=settings.vhost)

    @property
    def where(self) -> str:
        """The base URL, without credentials (safe to show)."""
        return self._base_url

    async def queues(self, name_pattern: str) -> dict[str, QueueFigures]:
        """Figures of the queues of our vhost whose names match `name_pattern` (a regex)."""
        url = f"{self._base_url}/api/queues/{quote(self._vhost, safe='')}"
        params = {"page": "1", "page_size": "500", "name": name_pattern, "use_regex": "true", "columns": _COLUMNS}
        try:
            async with self._session.get(url, params=params, headers=self._headers,
                                         timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)) as response:
                if response.status != 200:
                    raise ManagementApiError(f"{self._base_url} answered HTTP {response.status}")
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ManagementApiError(f"{self._base_url} unreachable ({type(exc).__name__})") from None
        return {item["name"]: figures_from_item(item) for item in body.get("items", [])}


def figures_from_item(item: Mapping[str, Any]) -> QueueFigures:
    """One entry of GET /api/queues/{vhost} (RabbitMQ 3.10 shape)."""
    stats = item.get("message_stats") or {}

    def rate(key: str) -> float:
        # RabbitMQ omits the stats of events that never happened: a rate of zero.
        details = stats.get(key)
        return float(details.get("rate", 0.0)) if isinstance(details, Mapping) else 0.0

    return QueueFigures(
        ready=item.get("messages_ready"),
        unacked=item.get("messages_unacknowledged"),
        consumers=item.get("consumers"),
        publish_rate=rate("publish_details"),
        deliver_rate=rate("deliver_get_details"),
        ack_rate=rate("ack_details"),
        policy=item.get("policy") or None,
    )
