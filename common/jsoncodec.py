"""The one JSON codec of the hot paths (raw frames in, transformed ticks out and back in).

orjson (C, 3–6× faster than the standard library here) decodes every well-formed UTF-8 frame; the
standard library takes over only when orjson refuses a text, so that odd but valid JSON (a UTF-16
or BOM-prefixed text, a lone surrogate escape) and the precise error of bad input (`NaN` through
`parse_constant`, RecursionError, UnicodeDecodeError) behave exactly as before.

Exactness: orjson decodes a JSON number with a fraction or exponent (and an integer beyond 64
bits) as float. No reader in this project accepts a float: prices, sizes and volumes must be JSON
*strings* of plain decimal notation (`common.exchanges.fields._decimal`, the loader's
`tick_copy_line`), times and sequences must be ints — so such a number is rejected as mistyped,
as it was when it decoded as Decimal, and no price ever passes through float. Prices become
Decimal from their strings only.
"""
from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, Callable

import orjson

dumps: Callable[[Any], bytes] = orjson.dumps   # compact separators, key order kept, UTF-8 bytes


def loads(data: bytes | bytearray | memoryview | str, parse_constant: Callable[[str], Any] | None = None) -> Any:
    """JSON text -> Python objects (orjson; the standard library, numbers as Decimal, if it refuses).

    Raises what `json.loads` raises for input neither accepts (ValueError, UnicodeDecodeError,
    RecursionError), or whatever `parse_constant` raises on `NaN`/`Infinity`.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data, parse_float=Decimal, parse_constant=parse_constant)
