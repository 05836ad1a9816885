"""API keys: their format, their hash, their scopes, and the principal a
verified key stands for.

A key reads `tmk_<id>_<secret>`: the id (16 hex digits) finds the row, the
secret (32 random bytes, base64url) proves possession. Only the SHA-256 of the
secret is stored; with 256 random bits there is nothing for a slow password
hash to protect, and a fast hash keeps every request cheap. The `tmk_` prefix
lets secret scanners recognise leaked keys.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

KEY_PREFIX = "tmk_"
_KEY = re.compile(r"^tmk_(?P<id>[0-9a-f]{16})_(?P<secret>[A-Za-z0-9_-]{43})$")
_DURATION = re.compile(r"^(?P<n>[1-9][0-9]*)(?P<unit>[mhdwy])$")
_UNITS = {"m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400, "y": 365 * 86_400}


class Scope(StrEnum):
    TASKS_READ = "tasks:read"
    TASKS_WRITE = "tasks:write"
    # Fleet-wide operations: dead letters, replay, purge, stats of every tenant.
    ADMIN = "admin"


@dataclass(frozen=True)
class NewKey:
    key_id: str
    token: str  # shown once, never stored

    @property
    def secret_sha256(self) -> str:
        return hash_secret(self.token.split("_", 2)[2])


def generate_key() -> NewKey:
    key_id = secrets.token_hex(8)
    return NewKey(key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}")


def parse_key(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key; None for anything else."""
    match = _KEY.match(token)
    return (match["id"], match["secret"]) if match else None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_sha256: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_sha256)


def parse_scopes(text: str) -> frozenset[Scope]:
    """`tasks:read,tasks:write` -> scopes; ValueError naming an unknown one."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("at least one scope is needed: " + ", ".join(Scope))
    unknown = [n for n in names if n not in Scope.__members__.values()]
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(Scope)}")
    return frozenset(Scope(n) for n in names)


def parse_duration(text: str) -> timedelta:
    """`90d`, `12h`, `30m`, `2w`, `1y` -> a timedelta."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 90d, 12h, 30m, 2w or 1y")
    return timedelta(seconds=int(match["n"]) * _UNITS[match["unit"]])


@dataclass(frozen=True)
class Principal:
    """Who is calling: a verified key, or nobody in particular when auth is off."""

    owner: str  # "key:<id>" or "anonymous"; tasks and idempotency keys belong to it
    name: str
    scopes: frozenset[Scope]
    kb_ids: frozenset[str] | None  # None: every knowledge base

    @classmethod
    def anonymous(cls) -> Principal:
        return cls(owner="anonymous", name="anonymous", scopes=frozenset(Scope), kb_ids=None)

    @property
    def is_anonymous(self) -> bool:
        return self.owner == "anonymous"

    def has(self, scope: Scope) -> bool:
        return scope in self.scopes

    def may_use_kb(self, kb_id: str | None) -> bool:
        """Keys restricted to knowledge bases may touch only those (and never kb-less tasks)."""
        if self.kb_ids is None:
            return True
        return kb_id is not None and kb_id in self.kb_ids
