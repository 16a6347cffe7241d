"""JSON in within bounds, compact JSON out: the one JSON parser every inbound body goes through.

orjson parses (fast, and it refuses nesting deeper than `MAX_DEPTH` without recursing in
Python). Before parsing, the number of values a body can hold is bounded from its bytes alone:
every value but the first follows a `[`, a `{` or a `,`, so their count is an upper bound (an
over-count where strings hold those characters). What a parse can allocate is therefore bounded
by the body's structure, not only by its size: `[[],[],...]` costs ~20x its bytes in Python
objects, and nothing stops it at the body-size limit alone.
"""

from __future__ import annotations

from typing import Any

import orjson

from lepton_runtime.errors import BadRequestError, PayloadTooLargeError

MAX_DEPTH = 1024  # orjson's own nesting limit
DEFAULT_MAX_VALUES = 1_000_000


def value_bound(data: bytes | str) -> int:
    """An upper bound on the number of JSON values `data` can hold."""
    if isinstance(data, str):
        return data.count(",") + data.count("[") + data.count("{") + 1
    return data.count(b",") + data.count(b"[") + data.count(b"{") + 1


def loads(data: bytes | str, max_values: int = DEFAULT_MAX_VALUES, what: str = "the body") -> Any:
    """Parse JSON text; BadRequestError if it is not JSON or nests too deep,
    PayloadTooLargeError if it may hold more than `max_values` values."""
    if not data.strip():
        raise BadRequestError(f"{what} is empty; expected JSON")
    bound = value_bound(data)
    if bound > max_values:
        raise PayloadTooLargeError(
            f"{what} may hold up to {bound} JSON values; the limit is {max_values}"
        )
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith(("depth limit", "recursion limit")):
            raise BadRequestError(
                f"{what} nests JSON deeper than {MAX_DEPTH} levels, the limit"
            ) from exc
        raise BadRequestError(f"{what} is not valid JSON ({exc})") from exc


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON; numpy scalars and arrays are written as numbers and lists."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
