"""Keeping secrets out of logs.

Two nets, both applied to every log line (message, fields, exception text):

- the exact values of the configured secrets (every `SecretStr` setting:
  passwords, API keys, callback secrets, URLs with credentials), so a secret
  is masked wherever it turns up, even inside a third-party error message;
- patterns for secrets we were never told about: the password in a URL's
  user-info (`amqp://user:pw@host`, a callback URL with credentials) and
  `password=...`-style pairs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote, urlsplit

MASK = "***"
# Shorter values are not masked by value (masking every "ab" would garble the
# logs); URL passwords and key=value pairs are still masked by pattern.
MIN_SECRET_LENGTH = 4

_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@/\s]+)(?=@)")
_KEY_VALUE = re.compile(
    r"(?P<head>\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|token|authorization)"
    r"[\"']?\s*[:=]\s*[\"']?(?:bearer\s+|basic\s+)?)(?P<value>[^\s\"',;&)]+)",
    re.IGNORECASE,
)


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = {v for s in secrets for v in _variants(s) if len(v) >= MIN_SECRET_LENGTH}
        # Longest first, so a secret containing another is masked whole.
        self._values = sorted(values, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(v) for v in self._values)) if self._values else None

    def redact(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
        return _KEY_VALUE.sub(lambda m: m.group("head") + MASK, text)

    def redact_value(self, value: Any) -> Any:
        """Redact strings inside log fields (nested dicts and lists included)."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self.redact_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact_value(v) for v in value]
        return value


def _variants(secret: str) -> set[str]:
    """The secret, its space-separated parts (rotated callback secrets), and
    for a URL its password, raw and percent-encoded."""
    secret = secret.strip()
    found = {secret, *secret.split()}
    for part in list(found):
        try:
            password = urlsplit(part).password
        except ValueError:
            password = None
        if password:
            found |= {password, unquote(password), quote(unquote(password), safe="")}
    return {v for v in found if v}
