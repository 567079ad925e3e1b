"""Validate a backfill request (CLI, Airflow trigger form, gap scheduler) into a BackfillRequest.

`validate_request(exchange, symbols, start, end, *, now=None, known_symbols=None,
max_window=None) -> BackfillRequest` raises `InvalidBackfillRequest` (a ValueError) whose message
lists every problem in words a person understands, e.g.
``end (2024-05-01 10:00 UTC) must be after start (2024-05-01 12:00 UTC)``.

Rules:
- exchange: a registered exchange (common.exchanges: 'binance', 'kucoin'), case-insensitive.
- symbols: a list of strings, a comma-separated string, or 'ALL' (every symbol the exchange
  lists as an active spot market). Each symbol is canonical BASE-QUOTE; 'btc/usdt' and 'btc-usdt'
  are accepted and normalized. Anything with non-ASCII characters, quotes, semicolons, slashes
  other than the one separator, '..' etc. is rejected (never echoed unquoted).
- symbols must be known to the exchange: `known_symbols` (canonical symbols) if given, else the
  exchange's active spot markets fetched once per process (backfill.rest.known_symbols).
- start/end: datetime or ISO 8601 text ('2024-05-01T12:00Z', '2024-05-01 12:00'); naive values
  are UTC. start is floored and end ceiled to the minute: the window is [start, end) in whole
  minutes. end must be after start, not in the future, the window no longer than
  `max_window` (default: settings.backfill_max_window_hours), nothing before 2017-07-01
  (neither exchange existed). Minutes not closed yet at `now` are left out (end is clamped to
  the start of the current minute); a window with no closed minute is an error.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from common.symbols import InvalidSymbol, check_canonical
from common.topics import EXCHANGES

UTC = timezone.utc
EARLIEST = datetime(2017, 7, 1, tzinfo=UTC)
ALL = "ALL"
MAX_SYMBOLS_TEXT = 200   # longest symbol text we echo back in an error


class InvalidBackfillRequest(ValueError):
    """A backfill request that must not run; str(e) says why, for a person."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class BackfillRequest:
    """A validated request: fetch 1-minute candles of `symbols` on `exchange` for [start, end)."""
    exchange: str
    symbols: tuple[str, ...]
    start: datetime          # UTC, whole minute
    end: datetime            # UTC, whole minute, exclusive

    @property
    def minutes(self) -> int:
        return int((self.end - self.start).total_seconds() // 60)

    def to_dict(self) -> dict:
        return {"exchange": self.exchange, "symbols": list(self.symbols),
                "start": self.start.isoformat(), "end": self.end.isoformat()}

    @classmethod
    def from_dict(cls, d: dict) -> "BackfillRequest":
        return cls(exchange=d["exchange"], symbols=tuple(d["symbols"]),
                   start=_as_utc(datetime.fromisoformat(d["start"])),
                   end=_as_utc(datetime.fromisoformat(d["end"])))


def floor_minute(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(second=0, microsecond=0)


def ceil_minute(t: datetime) -> datetime:
    f = floor_minute(t)
    return f if f == t else f + timedelta(minutes=1)


def _as_utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _fmt(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _show(value, limit: int = 60) -> str:
    """A value quoted for an error message: repr escapes quotes, control and non-ASCII chars."""
    text = ascii(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def parse_time(value, what: str) -> datetime:
    """datetime or ISO 8601 text -> UTC-aware datetime; raises InvalidBackfillRequest."""
    if isinstance(value, datetime):
        return _as_utc(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidBackfillRequest([f"{what} is missing: give a date-time like 2024-05-01T12:00Z"])
    text = value.strip()
    if len(text) > 40 or not text.isascii():
        raise InvalidBackfillRequest([f"{what} {_show(text)} is not a date-time; use ISO 8601 like 2024-05-01T12:00Z"])
    try:
        parsed = datetime.fromisoformat(text.replace(" ", "T", 1) if "T" not in text else text)
    except ValueError:
        raise InvalidBackfillRequest(
            [f"{what} {_show(text)} is not a date-time; use ISO 8601 like 2024-05-01T12:00Z"]) from None
    return _as_utc(parsed)


def normalize_symbol(raw) -> str:
    """'btc/usdt', 'BTC-USDT' -> 'BTC-USDT'; raises InvalidSymbol for anything else."""
    if not isinstance(raw, str):
        raise InvalidSymbol(f"symbol {_show(raw)} is not text")
    text = original = raw.strip()
    # check ASCII before upper(): 'ſ'.upper() == 'S' would otherwise let unicode through
    if not text.isascii():
        raise InvalidSymbol(f"symbol {_show(text)} has non-ASCII characters; use BASE-QUOTE like BTC-USDT")
    if text.count("/") == 1 and "-" not in text:
        text = text.replace("/", "-")
    try:
        return check_canonical(text.upper())
    except InvalidSymbol:
        raise InvalidSymbol(f"symbol {_show(original)} is not BASE-QUOTE (letters and digits joined by one dash, "
                            "like BTC-USDT)") from None


def parse_symbols(symbols) -> list[str] | str:
    """List / comma-separated text / 'ALL' -> sorted unique canonical symbols or ALL."""
    if symbols is None:
        raise InvalidBackfillRequest(["symbols are missing: give a list like BTC-USDT,ETH-USDT or ALL"])
    if isinstance(symbols, str):
        if symbols.strip().upper() == ALL:
            return ALL
        items = [s for s in symbols.split(",")]
    elif isinstance(symbols, Iterable):
        items = list(symbols)
        if len(items) == 1 and isinstance(items[0], str) and items[0].strip().upper() == ALL:
            return ALL
    else:
        raise InvalidBackfillRequest([f"symbols {_show(symbols)} must be a list or comma-separated text"])
    problems, out = [], set()
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        try:
            out.add(normalize_symbol(item))
        except InvalidSymbol as e:
            problems.append(str(e))
    if problems:
        raise InvalidBackfillRequest(problems[:5] + ([f"... and {len(problems) - 5} more bad symbols"]
                                                     if len(problems) > 5 else []))
    if not out:
        raise InvalidBackfillRequest(["no symbols given: give a list like BTC-USDT,ETH-USDT or ALL"])
    return sorted(out)


def validate_request(exchange, symbols, start, end, *, now: datetime | None = None,
                     known_symbols: Iterable[str] | Callable[[str], Iterable[str]] | None = None,
                     max_window: timedelta | None = None) -> BackfillRequest:
    """Check every parameter; return a BackfillRequest or raise InvalidBackfillRequest (all problems)."""
    problems: list[str] = []
    now = _as_utc(now) if now is not None else datetime.now(UTC)
    if max_window is None:
        from common.settings import get_settings
        max_window = timedelta(hours=get_settings().backfill_max_window_hours)

    ex = exchange.strip().lower() if isinstance(exchange, str) else None
    if ex not in EXCHANGES:
        problems.append(f"exchange {_show(exchange)} is not supported; choose one of {', '.join(EXCHANGES)}")

    wanted = None
    try:
        wanted = parse_symbols(symbols)
    except InvalidBackfillRequest as e:
        problems.extend(e.problems)

    t0 = t1 = None
    for what, value in (("start", start), ("end", end)):
        try:
            t = parse_time(value, what)
        except InvalidBackfillRequest as e:
            problems.extend(e.problems)
            continue
        if what == "start":
            t0 = t
        else:
            t1 = t
    if t0 is not None and t1 is not None:
        if t1 <= t0:
            problems.append(f"end ({_fmt(t1)}) must be after start ({_fmt(t0)})")
        elif t1 - t0 > max_window:
            hours = (t1 - t0).total_seconds() / 3600
            problems.append(f"the window is {hours:.1f} hours long; the maximum is "
                            f"{max_window.total_seconds() / 3600:g} hours: split it into smaller backfills")
    for what, t in (("start", t0), ("end", t1)):
        if t is None:
            continue
        if t < EARLIEST:
            problems.append(f"{what} ({_fmt(t)}) is before {_fmt(EARLIEST)}: neither exchange has data that old")
        elif t > now:
            problems.append(f"{what} ({_fmt(t)}) is in the future (now is {_fmt(now)})")

    begin = end_ = None
    if t0 is not None and t1 is not None and not problems:
        begin, end_ = floor_minute(t0), min(ceil_minute(t1), floor_minute(now))
        if end_ <= begin:
            problems.append(f"the window {_fmt(t0)} .. {_fmt(t1)} has no finished minute yet; "
                            "only closed minutes can be backfilled")

    if ex in EXCHANGES and wanted is not None and not problems:
        if callable(known_symbols):
            known = set(known_symbols(ex))
        elif known_symbols is not None:
            known = set(known_symbols)
        else:
            from backfill.rest import known_symbols as fetch_known
            known = set(fetch_known(ex))
        if wanted == ALL:
            wanted = sorted(known)
            if not wanted:
                problems.append(f"{ex} lists no active spot market")
        else:
            unknown = [s for s in wanted if s not in known]
            if unknown:
                shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
                problems.append(f"{ex} has no active spot market {shown}")

    if problems:
        raise InvalidBackfillRequest(problems)
    return BackfillRequest(exchange=ex, symbols=tuple(wanted), start=begin, end=end_)
