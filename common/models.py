"""Normalized records shared by every exchange. Prices are Decimal, times are UTC-aware."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal


UTC = timezone.utc


def ms_to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def ns_to_dt(ns: int) -> datetime:
    # keep microsecond precision without going through float for large values
    seconds, rem = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=rem // 1000)


def dt_to_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def iso_utc(dt: datetime) -> str:
    """The one text form of a time on the project's HTTP/websocket wire: ISO-8601, UTC, 'Z',
    milliseconds (the exchanges' precision), e.g. 2026-11-25T08:00:00.123Z."""
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def decimal_text(value: Decimal) -> str:
    """A price as a JSON string in plain notation (never 1.1E-7, never through float)."""
    return format(value, "f")


@dataclass(frozen=True, slots=True)
class Tick:
    """One ticker update: the newest price of a symbol on an exchange at `event_time`."""
    exchange: str
    symbol: str                 # canonical BASE-QUOTE, e.g. BTC-USDT
    event_time_ms: int          # exchange time, epoch milliseconds UTC
    price: Decimal
    received_ns: int            # when the extractor read the frame, epoch nanoseconds
    sequence: int = 0           # exchange sequence where given, 0 otherwise
    bid: Decimal | None = None
    bid_size: Decimal | None = None
    ask: Decimal | None = None
    ask_size: Decimal | None = None
    last_size: Decimal | None = None
    open_24h: Decimal | None = None
    high_24h: Decimal | None = None
    low_24h: Decimal | None = None
    volume_24h: Decimal | None = None        # base asset
    quote_volume_24h: Decimal | None = None

    @property
    def event_time(self) -> datetime:
        return ms_to_dt(self.event_time_ms)

    @property
    def received_at(self) -> datetime:
        return ns_to_dt(self.received_ns)


@dataclass(frozen=True, slots=True)
class Candle:
    """One 1-minute OHLCV candle; open_time is the minute's start (UTC)."""
    exchange: str
    symbol: str
    open_time: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    source: str = "rest"       # 'stream' (from ticks) or 'rest' (backfill)


@dataclass(frozen=True, slots=True)
class PipelineEvent:
    """A connection lifecycle event from an extractor (topic `pipeline_events`)."""
    exchange: str
    conn_id: str
    kind: str                  # connected | subscribed | heartbeat | disconnected | stalled | spool_full | spool_drained
    at_ns: int
    reason: str = ""
    detail: dict = field(default_factory=dict)

    KINDS = ("connected", "subscribed", "heartbeat", "disconnected", "stalled", "spool_full", "spool_drained")

    def to_json(self) -> bytes:
        from common.codec.events import encode_event   # the codec owns the wire form

        return encode_event(self)
