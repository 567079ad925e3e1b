"""Candle checks: how far the stream's candles (built from tickers) were from the exchange's own.

A ticker stream samples the trades (Binance `!miniTicker@arr` carries the last trade of each
second, KuCoin throttles each symbol's pushes), so a candle built from it misses the trades in
between: its open, high, low and close can differ from the exchange's 1-minute candle, and its
volume is only the sizes of the trades its tickers carried (KuCoin; Binance's miniTicker carries
none, so a Binance stream candle has no volume to compare). Whenever a REST candle replaces what the stream stored (reconciliation, or a
backfill that covers streamed minutes), the store compares the two here, in the same transaction
as the write, and adds the result to `candle_checks` (one row per exchange and minute). A stream
candle is replaced once, so it is counted once, however often a chunk is retried.

Pure:
- `relative_difference(stream, rest) -> Decimal | None`: |stream - rest| / rest.
- `minute_checks(stored, candles, *, stream_since) -> list[MinuteCheck]`: one symbol's chunk.
Postgres:
- `stream_since(cur, exchange) -> datetime | None`: the minute the exchange's first session began.
- `record(cur, exchange, checks)`: adds to `candle_checks` (additive upsert, minute order).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from psycopg2.extras import execute_values

FIELDS = ("open", "high", "low", "close", "volume")


def relative_difference(stream: Decimal | None, rest: Decimal | None) -> Decimal | None:
    """|stream - rest| / rest, exact; None when either is unknown or rest is 0 and they differ
    (no ratio says how far a volume is from none)."""
    if stream is None or rest is None:
        return None
    if stream == rest:
        return Decimal(0)
    if rest == 0:
        return None
    return abs(stream - rest) / rest


@dataclass
class MinuteCheck:
    """What one minute's REST candles said about the stream's, summed over symbols."""
    minute: datetime
    compared: int = 0          # stream candles held against the exchange's
    differing: int = 0         # of those, with any field different (volume only when the stream has one)
    missing: int = 0           # the exchange traded, the stream stored no candle
    max_rel: dict[str, Decimal | None] = field(default_factory=lambda: dict.fromkeys(FIELDS))

    def add(self, stream: tuple | None, rest) -> None:
        """One symbol: `stream` = the stored stream candle (open, high, low, close, volume) or None;
        `rest` = the exchange's candle (backfill.rest.MinuteCandle)."""
        traded = not rest.confirmed_empty and rest.volume is not None and rest.volume > 0
        if stream is None:
            self.missing += int(traded)
            return
        self.compared += 1
        if not traded:                  # the stream saw a price in a minute the exchange says had no trade
            self.differing += 1
            return
        differs = False
        for name, mine in zip(FIELDS, stream):
            theirs = getattr(rest, name)
            if mine is None:            # no volume in the stream candle (Binance): nothing to hold it against
                continue
            differs |= mine != theirs
            diff = relative_difference(mine, theirs)
            if diff is not None and (self.max_rel[name] is None or diff > self.max_rel[name]):
                self.max_rel[name] = diff
        self.differing += int(differs)

    @property
    def empty(self) -> bool:
        return self.compared == 0 and self.missing == 0


def minute_checks(stored: Mapping[datetime, tuple], candles: Iterable, *,
                  stream_since: datetime | None) -> list[MinuteCheck]:
    """The checks one symbol's REST candles make, minute by minute (pure).

    stored: {open_time: (open, high, low, close, volume, source)} as the minute was stored before
    the write (absent: no row). A 'rest' row was checked when it was first written; a minute with
    no row counts as missed by the stream only from `stream_since` on (before the stream began
    nothing was the stream's to miss; None: it never began)."""
    out = []
    for candle in sorted(candles, key=lambda c: c.open_time):
        row = stored.get(candle.open_time)
        check = MinuteCheck(candle.open_time)
        if row is None:
            if stream_since is None or candle.open_time < stream_since:
                continue
            check.add(None, candle)
        elif row[5] == "stream":
            check.add(tuple(row[:5]), candle)
        if not check.empty:
            out.append(check)
    return out


def stream_since(cur, exchange: str) -> datetime | None:
    """The start of the minute in which the exchange's first stream session connected."""
    cur.execute("SELECT date_trunc('minute', min(connected_at)) FROM stream_sessions WHERE exchange = %s",
                (exchange,))
    return cur.fetchone()[0]


_RECORD = """
INSERT INTO candle_checks AS k (exchange, minute, symbols_compared, symbols_differing, symbols_missing,
                                max_open_rel_diff, max_high_rel_diff, max_low_rel_diff, max_close_rel_diff,
                                max_volume_rel_diff)
VALUES %s
ON CONFLICT (exchange, minute) DO UPDATE SET
    symbols_compared = k.symbols_compared + EXCLUDED.symbols_compared,
    symbols_differing = k.symbols_differing + EXCLUDED.symbols_differing,
    symbols_missing = k.symbols_missing + EXCLUDED.symbols_missing,
    max_open_rel_diff = greatest(k.max_open_rel_diff, EXCLUDED.max_open_rel_diff),
    max_high_rel_diff = greatest(k.max_high_rel_diff, EXCLUDED.max_high_rel_diff),
    max_low_rel_diff = greatest(k.max_low_rel_diff, EXCLUDED.max_low_rel_diff),
    max_close_rel_diff = greatest(k.max_close_rel_diff, EXCLUDED.max_close_rel_diff),
    max_volume_rel_diff = greatest(k.max_volume_rel_diff, EXCLUDED.max_volume_rel_diff),
    checked_at = now()
"""


def record(cur, exchange: str, checks: list[MinuteCheck]) -> None:
    """Add `checks` to `candle_checks`. Rows are locked in minute order, as every writer does,
    so that chunks of different symbols writing the same minutes queue instead of deadlocking."""
    if not checks:
        return
    rows = [(exchange, c.minute, c.compared, c.differing, c.missing, *(c.max_rel[f] for f in FIELDS))
            for c in sorted(checks, key=lambda c: c.minute)]
    execute_values(cur, _RECORD, rows, page_size=1000)
