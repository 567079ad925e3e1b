"""What every exchange plug's parser shares: the error types, the frame guards and the strict
field readers.

Parsing is pure: bytes in, `common.models.Tick` out, no clock, no network. The only notion of
"now" is the `received_ns` the caller passes in, which bounds how far in the future an exchange
timestamp may be.

Hostile-input rules (every plug):
- frames larger than `max_frame_bytes` -> `oversized`; JSON nested deeper than `MAX_DEPTH` ->
  `too_deep`; undecodable bytes or bad JSON -> `malformed_json`; `NaN`/`Infinity` literals -> `non_finite`.
- JSON is decoded by `common.jsoncodec` (orjson; the standard library when orjson refuses a
  text). A JSON number with a fraction may decode as float, but no field reader accepts one:
  decimals must be strings, times and sequences ints, so a price never passes through float.
- prices are the exchange's *strings* of plain decimal notation (`"67220"`, `"0.0000001141"`).
  Exponent notation (`"1e5"`), signs, `NaN`/`Infinity` strings, empty strings and strings longer
  than `MAX_NUMBER_CHARS` (or with more than 40 digits on a side) are rejected: no recorded frame of either exchange uses them, and
  `Decimal("1e999999999")` is a cheap way to make every later arithmetic step explode.
- a price must be > 0; sizes/volumes must be >= 0.
- event times must be integers (milliseconds) between 2009-01-03 and one day after `received_ns`.
- symbols must come out canonical (`common.symbols.check_canonical`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from itertools import accumulate
from typing import Any

from common import jsoncodec
from common.codec.limits import (EPOCH_FLOOR_MS, INT64_MAX, MAX_EVENT_AHEAD_MS, MAX_NUMBER_CHARS,  # noqa: F401
                                 PLAIN_DECIMAL)

MAX_DEPTH = 8                      # deepest legit ticker frame: wrapper -> array -> object (3)
# the limits every hop shares (common.codec.limits): decimals, times, int64
MIN_EVENT_MS = EPOCH_FLOOR_MS
MAX_FUTURE_MS = MAX_EVENT_AHEAD_MS

_PLAIN_DECIMAL = re.compile(PLAIN_DECIMAL)
_BRACKETS = b"[]{}"
_DELTA = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
_ALL_BYTES = bytes(range(256))
_NON_BRACKETS = bytes(b for b in _ALL_BYTES if b not in _BRACKETS)


class BadFrame(ValueError):
    """A frame (or one element of a multi-ticker frame) that cannot become a Tick.

    `reason` is short and machine-readable (`malformed_json`, `missing_field:c`,
    `non_positive_price`, `absurd_timestamp`, `oversized`, ...), safe for a DLQ header.
    """

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class UnknownSymbol(BadFrame):
    """The exchange symbol is not in the plug's symbol map (refresh the metadata and retry)."""

    def __init__(self, symbol: str):
        self.symbol = symbol
        super().__init__("unknown_symbol", f"{symbol!r:.60}")


@dataclass(frozen=True, slots=True)
class Reject:
    """One bad element of a multi-ticker frame (e.g. Binance `!miniTicker@arr`)."""
    index: int
    error: BadFrame
    element: Any          # the decoded JSON element (dict/list/str/...), for the DLQ record

    @property
    def reason(self) -> str:
        return self.error.reason


def decode_frame(raw: bytes | str, max_frame_bytes: int) -> Any:
    """Size, depth and JSON checks; returns the decoded value (BadFrame otherwise)."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise BadFrame("malformed_json", f"expected bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    if len(raw) > max_frame_bytes:
        raise BadFrame("oversized", f"{len(raw)} bytes > {max_frame_bytes}")
    # fewer opening brackets than the limit cannot nest deeper (one-ticker frames: 2)
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and json_depth(raw) > MAX_DEPTH:
        raise BadFrame("too_deep", f"nesting > {MAX_DEPTH}")
    try:
        return jsoncodec.loads(raw, parse_constant=_reject_constant)
    except BadFrame:
        raise
    except RecursionError:
        raise BadFrame("too_deep", "json recursion limit") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadFrame("malformed_json", str(exc)[:120]) from None


def json_depth(raw: bytes) -> int:
    """Upper bound of the bracket nesting of a JSON text (brackets inside strings count too).

    Runs at C speed (bytes.translate) so a 400 kB ticker array costs a few hundred microseconds.
    """
    brackets = raw.translate(None, _NON_BRACKETS)
    if not brackets:
        return 0
    return max(accumulate(_DELTA[b] for b in brackets))


def _reject_constant(name: str):
    raise BadFrame("non_finite", name)


# ---------------------------------------------------------------------- strict field readers

def require(obj: dict, key: str) -> Any:
    try:
        return obj[key]
    except KeyError:
        raise BadFrame(f"missing_field:{key}") from None


def price_field(obj: dict, key: str) -> Decimal:
    """A required price: plain positive decimal string."""
    value = _decimal(require(obj, key), key, True)
    if value <= 0:
        raise BadFrame("non_positive_price", f"{key}={value}")
    return value


def optional_price(obj: dict, key: str) -> Decimal | None:
    """An optional quote (bid/ask): absent/null/zero -> None (zero = nothing on that side of
    the book, which both exchanges send for empty books); negative -> BadFrame."""
    raw = obj.get(key)
    if raw is None:
        return None
    value = _decimal(raw, key, True)
    return value if value > 0 else None


def optional_amount(obj: dict, key: str) -> Decimal | None:
    """An optional size/volume: absent/null -> None; when given it must be >= 0."""
    raw = obj.get(key)
    if raw is None:
        return None
    return _decimal(raw, key, False)


def _decimal(raw: Any, key: str, is_price: bool) -> Decimal:
    """A plain non-negative decimal string -> Decimal (never through float)."""
    if not isinstance(raw, str):
        raise BadFrame(f"mistyped_field:{key}", f"expected a decimal string, got {type(raw).__name__}")
    if len(raw) > MAX_NUMBER_CHARS:
        raise BadFrame("oversized_number", f"{key}: {len(raw)} chars")
    if _PLAIN_DECIMAL.fullmatch(raw):
        return Decimal(raw)
    word = raw.strip().lower().lstrip("+-")
    if word in ("nan", "snan", "inf", "infinity"):
        raise BadFrame("non_finite_price" if is_price else "non_finite", f"{key}={raw!r:.40}")
    if "e" in word and _PLAIN_DECIMAL.fullmatch(word.replace("e", "", 1).replace("-", "", 1).replace("+", "", 1)):
        raise BadFrame("exponent_notation", f"{key}={raw!r:.40}")
    if raw.startswith("-") and _PLAIN_DECIMAL.fullmatch(raw[1:]):
        raise BadFrame("non_positive_price" if is_price else "negative_amount", f"{key}={raw!r:.40}")
    raise BadFrame(f"bad_number:{key}", f"{raw!r:.40}")


def event_ms(raw: Any, key: str, received_ns: int) -> int:
    """A millisecond timestamp: an int within [2009-01-01, received + 1 day]."""
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise BadFrame(f"mistyped_field:{key}", f"expected integer milliseconds, got {type(raw).__name__}")
    check_event_ms(raw, received_ns, key)
    return raw


def check_event_ms(ms: int, received_ns: int, key: str = "time") -> int:
    if ms < MIN_EVENT_MS or ms > received_ns // 1_000_000 + MAX_FUTURE_MS:
        raise BadFrame("absurd_timestamp", f"{key}={ms}")
    return ms


def sequence_field(raw: Any, key: str) -> int:
    """An exchange sequence/trade id: non-negative int64, given as an int or a digit string."""
    if isinstance(raw, bool):
        raise BadFrame(f"mistyped_field:{key}")
    if isinstance(raw, str):
        if not raw.isdigit() or not raw.isascii() or len(raw) > 19:
            raise BadFrame(f"bad_sequence:{key}", f"{raw!r:.40}")
        raw = int(raw)
    if not isinstance(raw, int):
        raise BadFrame(f"mistyped_field:{key}", f"expected an integer, got {type(raw).__name__}")
    if raw < 0 or raw > INT64_MAX:
        raise BadFrame(f"bad_sequence:{key}", str(raw)[:40])
    return raw


def require_dict(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise BadFrame(f"mistyped_field:{what}", f"expected an object, got {type(value).__name__}")
    return value
