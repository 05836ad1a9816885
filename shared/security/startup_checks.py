"""What production refuses to start with, and what it only warns about.

Each process runs `enforce(settings, process)` at its entry point: a problem
stops the process with a message naming the setting. Production refuses
anything insecure; development refuses only an api without auth listening
beyond loopback.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import sys
from urllib.parse import urlsplit

from loguru import logger

from shared.settings import Settings

MIN_SECRET_BYTES = 24  # Standard Webhooks: 24 to 64 bytes of key material


def problems(settings: Settings, process: str) -> tuple[list[str], list[str]]:
    """(refusals, warnings) for `process` (api, worker, dispatcher)."""
    refuse: list[str] = []
    warn: list[str] = []
    if process == "api" and not settings.auth_required and not _loopback(settings.service.http_host):
        # Without keys the api trusts every caller, so only this machine may be one.
        refuse.append(f"AUTH_REQUIRED is off but the api would listen on {settings.service.http_host}: "
                      "without API keys it listens on loopback only (unset BIND_HOST or set AUTH_REQUIRED=true)")
    if not settings.service.is_production:
        return refuse, warn
    if process == "api" and not settings.auth_required:
        refuse.append("AUTH_REQUIRED=false is not allowed in production: every caller would be trusted")
    if process == "dispatcher":
        secrets = settings.callbacks.secrets()
        secret_file = settings.callbacks.callback_secret_file
        if not secrets and secret_file is not None:
            refuse.append(f"CALLBACK_SECRET is not set and CALLBACK_SECRET_FILE {secret_file} is missing or empty: "
                          "callbacks would be unsigned (run `taskmgr bootstrap` to generate it)")
        elif not secrets:
            refuse.append("CALLBACK_SECRET is not set: callbacks would be unsigned (set one or more whsec_ secrets)")
        refuse.extend(f"CALLBACK_SECRET #{i + 1} is too weak: {reason}" for i, s in enumerate(secrets)
                      if (reason := _weak(s)))
    token = settings.auth.metrics_token
    if token is not None and len(token.get_secret_value()) < 32:
        refuse.append("METRICS_TOKEN must be at least 32 characters")
    amqp = urlsplit(settings.amqp.url.get_secret_value())
    if amqp.username in (None, "", "guest") or amqp.password in (None, "", "guest"):
        refuse.append("AMQP_URL uses the default guest account: give each role its own RabbitMQ user "
                      "(deploy/rabbitmq/definitions.json)")
    for entry in settings.callbacks.allowed_hosts or []:
        try:
            if ipaddress.ip_network(entry.strip("[]"), strict=False).prefixlen == 0:
                refuse.append(f"CALLBACK_ALLOWED_HOSTS entry {entry!r} allows every address: the SSRF guard would be off")
        except ValueError:
            pass
    if not settings.amqp.uses_tls:
        warn.append("AMQP_URL is not amqps://: broker traffic (task payloads, credentials) is not encrypted")
    if not settings.postgres.uses_local_server and settings.postgres.sslmode in (None, "disable", "allow", "prefer"):
        warn.append("POSTGRES_SSLMODE does not require TLS (use require, verify-ca or verify-full)")
    return refuse, warn


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def enforce(settings: Settings, process: str) -> None:
    refuse, warn = problems(settings, process)
    for message in warn:
        logger.warning("insecure configuration: {}", message)
    if refuse:
        for message in refuse:
            logger.error("refusing to start in production: {}", message)
        sys.exit(2)


def _weak(secret: str) -> str | None:
    if secret.startswith("whsec_"):
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            return "not valid base64 after whsec_"
        return None if len(key) >= MIN_SECRET_BYTES else f"{len(key)} bytes of key; at least {MIN_SECRET_BYTES}"
    return None if len(secret) >= 32 else "shorter than 32 characters"
