"""Identifiers. Task ids are UUIDv7 (RFC 9562): time-ordered, so the newest-first
listing and its cursor follow the primary key, and "the newer task" of two is
the one with the greater id.

Within one process ids are strictly increasing, even within a millisecond
(RFC 9562, section 6.2, method 1: the 12 `rand_a` bits are a counter that
starts at a random value each millisecond). Across processes, order is by
millisecond only.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_COUNTER_BITS = 12
_lock = threading.Lock()
_last_ms = -1
_counter = 0


def new_task_id() -> str:
    return str(uuid7())


def new_event_id() -> str:
    return str(uuid7())


def uuid7() -> uuid.UUID:
    global _last_ms, _counter
    with _lock:
        unix_ms = time.time_ns() // 1_000_000
        if unix_ms > _last_ms:
            _last_ms = unix_ms
            # Start low in the range, so a burst within the millisecond has room to count up.
            _counter = int.from_bytes(os.urandom(2), "big") >> (16 - _COUNTER_BITS + 1)
        else:
            _counter += 1
            if _counter >> _COUNTER_BITS:  # 2048+ ids in one millisecond: borrow the next one
                _last_ms += 1
                _counter = 0
        unix_ms, counter = _last_ms, _counter
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (unix_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= counter << 64  # rand_a: the counter
    value |= 0b10 << 62  # variant
    value |= rand_b
    return uuid.UUID(int=value)


def is_task_id(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return False
    return True
