"""Validation of every query parameter: a bad one is a 4xx whose `detail` says what is wrong and
what is expected. Hostile text is never echoed raw (ascii-escaped, cut short) and never reaches
SQL except as a bound parameter of an allowed value."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from fastapi import HTTPException

from common.symbols import InvalidSymbol, check_canonical
from common.topics import EXCHANGES

UTC = timezone.utc
EARLIEST = datetime(2017, 7, 1, tzinfo=UTC)       # neither exchange existed before
MAX_PARAM_TEXT = 4000


def show(value: str, limit: int = 40) -> str:
    """A value quoted for an error message: quotes, control and non-ASCII characters escaped."""
    text = ascii(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def bad(detail: str, status: int = 400) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


def split_list(raw: str | None, what: str) -> list[str] | None:
    if raw is None or raw.strip() == "":
        return None
    if len(raw) > MAX_PARAM_TEXT:
        raise bad(f"{what} is too long ({len(raw)} characters)")
    return [p.strip() for p in raw.split(",") if p.strip()]


def exchanges(raw: str | None) -> list[str]:
    """'binance,kucoin' (or nothing: every exchange) -> validated names."""
    names = split_list(raw, "exchange")
    if names is None:
        return list(EXCHANGES)
    out = []
    for name in names:
        if name.lower() not in EXCHANGES:
            raise bad(f"unknown exchange {show(name)}: expected one of {', '.join(EXCHANGES)}")
        if name.lower() not in out:
            out.append(name.lower())
    return out


def one_exchange(raw: str | None) -> str:
    if raw is None or raw.strip() == "":
        raise bad(f"exchange is required: one of {', '.join(EXCHANGES)}")
    names = exchanges(raw)
    if len(names) != 1:
        raise bad("give one exchange")
    return names[0]


def symbol(raw: str) -> str:
    """'BTC-USDT' (case-insensitive) -> canonical; anything else is a 400."""
    try:
        return check_canonical(raw.upper() if raw.isascii() else raw)
    except InvalidSymbol:
        raise bad(f"{show(raw)} is not a symbol: expected BASE-QUOTE in letters and digits, e.g. BTC-USDT") from None


def symbols(raw: str | None, limit: int) -> list[str] | None:
    names = split_list(raw, "symbols")
    if names is None:
        return None
    if len(names) > limit:
        raise bad(f"too many symbols: {len(names)} (at most {limit} per request or subscription)")
    return list(dict.fromkeys(symbol(n) for n in names))


def unknown(found: set[str], asked: list[str], where: str) -> None:
    missing = [s for s in asked if s not in found]
    if missing:
        raise bad(f"unknown symbol{'s' if len(missing) > 1 else ''} on {where}: {', '.join(missing[:20])}", 404)


def time_param(raw: str | None, what: str) -> datetime | None:
    """ISO-8601 text ('2026-11-25T08:00Z'; naive means UTC) -> aware UTC datetime."""
    if raw is None or raw.strip() == "":
        return None
    text = raw.strip()
    # printable ASCII only: CPython's parser stops at a NUL and would accept "2026-11-25\x00junk"
    if len(text) > 40 or not text.isascii() or not text.isprintable():
        raise bad(f"{what} {show(text)} is not a date-time: use ISO-8601 like 2026-11-25T08:00Z")
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise bad(f"{what} {show(text)} is not a date-time: use ISO-8601 like 2026-11-25T08:00Z") from None
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    if t < EARLIEST or t > datetime.now(UTC) + timedelta(days=1):
        raise bad(f"{what} {text} is out of range (from {EARLIEST:%Y-%m-%d} to tomorrow)")
    return t


def window(start_raw: str | None, end_raw: str | None, max_hours: int,
           default: timedelta = timedelta(hours=1)) -> tuple[datetime, datetime]:
    """[start, end) in whole minutes: start floored, end ceiled; end defaults to now, start to
    `default` before end; at most `max_hours` long."""
    end = time_param(end_raw, "end") or datetime.now(UTC)
    start = time_param(start_raw, "start") or end - default
    start = start.replace(second=0, microsecond=0)
    floor_end = end.replace(second=0, microsecond=0)
    end = floor_end if floor_end == end else floor_end + timedelta(minutes=1)
    if end <= start:
        raise bad(f"end ({end:%Y-%m-%dT%H:%MZ}) must be after start ({start:%Y-%m-%dT%H:%MZ})")
    if end - start > timedelta(hours=max_hours):
        hours = (end - start).total_seconds() / 3600
        raise bad(f"window of {hours:.1f} hours is too long: at most {max_hours} hours per request "
                  "(page through longer spans)")
    return start, end


def bounded_int(value: int | None, what: str, lo: int, hi: int, default: int) -> int:
    if value is None:
        return default
    if not lo <= value <= hi:
        raise bad(f"{what} must be between {lo} and {hi}, got {value}")
    return value
