"""Signing and verifying callbacks, per the Standard Webhooks spec
(https://www.standardwebhooks.com): three headers,

    webhook-id:        msg id; the same for every retry, so receivers dedupe on it
    webhook-timestamp: unix seconds
    webhook-signature: "v1,<base64 HMAC-SHA256 of '{id}.{timestamp}.{body}'>" (space-separated, one per secret)

A receiver verifies with `verify(...)` below; it accepts any of its secrets,
which is how rotation works (sign with old and new, then drop the old).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
DEFAULT_TOLERANCE_SECONDS = 300


class WebhookVerificationError(Exception):
    pass


def _key(secret: str) -> bytes:
    # Standard Webhooks secrets are "whsec_<base64>"; plain strings are used as-is.
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign(secrets: Iterable[str], msg_id: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
    """The headers to send with `body`; empty when there are no secrets."""
    secrets = list(secrets)
    if not secrets:
        return {}
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: " ".join(signature(s, msg_id, ts, body) for s in secrets),
    }


def verify(
    secrets: Iterable[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Raise `WebhookVerificationError` unless one signature matches one secret
    and the timestamp is within the tolerance (replay protection)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id = lowered[ID_HEADER]
        ts = int(lowered[TIMESTAMP_HEADER])
        sent = lowered[SIGNATURE_HEADER].split()
    except (KeyError, ValueError) as exc:
        raise WebhookVerificationError("missing or malformed webhook headers") from exc
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_seconds:
        raise WebhookVerificationError("timestamp outside the tolerance window")
    expected = {signature(s, msg_id, ts, body) for s in secrets}
    if not any(hmac.compare_digest(candidate, e) for candidate in sent for e in expected):
        raise WebhookVerificationError("no signature matches")
