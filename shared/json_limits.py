"""How deep, wide and long a JSON value may be, checked wherever JSON enters
(REST bodies, batch items, `tm.submit`, every consumer).

Without a bound, a 1 KB body nested a few hundred levels deep passes
validation and then breaks whatever walks it next: the database driver's
encoder, pydantic's JSON parser in the worker, a recursive helper. The limits
here sit far below every one of those, so a value the api accepts is one every
later step can encode and parse.

The walk is iterative: checking a hostile value must not itself recurse.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import orjson

from shared.errors import FieldError, InvalidRequest

# Levels of objects/arrays. orjson refuses more than 1024 and encodes at most 254; pydantic's
# JSON parser stops at about 200. 64 is far more than any real payload needs.
MAX_DEPTH = 64
# Members of one object and items of one array.
MAX_CONTAINER_ITEMS = 10_000
# Characters in one string or key (the whole body is capped by MAX_BODY_BYTES before this).
MAX_STRING_CHARS = 1_000_000


@dataclass(frozen=True)
class JsonLimits:
    max_depth: int = MAX_DEPTH
    max_container_items: int = MAX_CONTAINER_ITEMS
    max_string_chars: int = MAX_STRING_CHARS
    # Levels of wrapping around the values the limits are for (a batch body holds its
    # tasks two levels down): allowed on top of max_depth, never named in an error.
    envelope_levels: int = 0

    def envelope(self, levels: int) -> JsonLimits:
        """These limits, for values wrapped `levels` deep."""
        return replace(self, envelope_levels=levels)


DEFAULT_LIMITS = JsonLimits()


class JsonTooComplex(InvalidRequest):
    """A JSON value exceeds a shape limit; the message names the limit and where."""

    code = "json_too_complex"

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}", [FieldError(where, message)])


def check_json_shape(value: Any, limits: JsonLimits = DEFAULT_LIMITS, where: str = "") -> None:
    """Raise `JsonTooComplex` naming the first limit `value` exceeds and where
    (`payload.x.0`; `where` prefixes the path, "body" when it is the whole value)."""
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, at, depth = stack.pop()
        path = at or "body"
        if isinstance(item, str):
            if len(item) > limits.max_string_chars:
                raise JsonTooComplex(path, f"string longer than {limits.max_string_chars} characters "
                                           "(the JSON string length limit)")
            continue
        if not isinstance(item, dict | list):
            continue
        if depth >= limits.max_depth + limits.envelope_levels:
            raise JsonTooComplex(path, f"nested deeper than {limits.max_depth} levels (the JSON nesting limit)")
        if len(item) > limits.max_container_items:
            kind = "keys" if isinstance(item, dict) else "items"
            raise JsonTooComplex(path, f"more than {limits.max_container_items} {kind} "
                                       f"(the JSON {'key-count' if kind == 'keys' else 'array-length'} limit)")
        if isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and len(key) > limits.max_string_chars:
                    raise JsonTooComplex(path, f"a key longer than {limits.max_string_chars} characters "
                                               "(the JSON string length limit)")
                stack.append((child, f"{at}.{key}" if at else str(key), depth + 1))
        else:
            stack.extend((child, f"{at}.{i}" if at else str(i), depth + 1) for i, child in enumerate(item))


def loads_checked(raw: bytes | str, limits: JsonLimits = DEFAULT_LIMITS, where: str = "") -> Any:
    """Decode JSON and check its shape. Raises `orjson.JSONDecodeError` for bad JSON
    (orjson itself stops at 1024 levels) and `JsonTooComplex` past a limit."""
    value = orjson.loads(raw)
    check_json_shape(value, limits, where)
    return value
