"""Field types that accept exactly what their JSON Schema says.

pydantic's lax mode would take `"7"` or `true` for an int and `1` for a bool;
JSON Schema (and so the OpenAPI contract) would not, and a contract test
rightly calls that "schema-violating request accepted". These types take JSON
numbers for numbers (integral floats such as 7.0 count as integers, as in JSON
Schema) and JSON booleans for booleans, nothing else.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, Strict


def _integral(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(_integral), Strict()]
JsonFloat = Annotated[float, Strict()]  # ints are numbers too; bools and strings are not
JsonBool = Annotated[bool, Strict()]


def json_int(**constraints: Any) -> Any:
    """JsonInt with bounds (ge=, le=, ...). The bounds must come before the
    validator in the Annotated for pydantic to write them as JSON Schema
    minimum/maximum; this keeps that order in one place."""
    return Annotated[int, Field(**constraints), BeforeValidator(_integral), Strict()]
