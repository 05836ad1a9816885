"""Identifiers. Task ids are UUIDv7 (RFC 9562): time-ordered, so the newest-first
listing and its cursor follow the primary key."""

from __future__ import annotations

import os
import time
import uuid


def new_task_id() -> str:
    return str(uuid7())


def new_event_id() -> str:
    return str(uuid7())


def uuid7() -> uuid.UUID:
    unix_ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (unix_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 68) & 0xFFF) << 64  # rand_a
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b
    return uuid.UUID(int=value)


def is_task_id(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return False
    return True
