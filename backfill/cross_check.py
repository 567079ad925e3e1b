"""Cross-exchange validation: the seed's reason for two sources, checked minute by minute.

For every pair listed on two exchanges, compare the stored 1-minute closes (`candles_1m`); where
they differ by more than `threshold_bps` (of their mid price) for at least `min_minutes` minutes
in a row, record the window in `price_divergences` (migration 008).

- `find_divergences(cur, start, end, ...) -> list[Divergence]`: pure SQL read over [start, end).
- `record_divergences(conn, divergences) -> int`: idempotent: a window that overlaps or touches a
  recorded one of the same pair is merged into it (so a re-run, or a run whose lookback cuts a
  window another run saw whole, adds no row).
- `cross_check(conn, start, end, ...) -> dict`: both, with the run's figures (DAG
  `crypto_cross_check`, `cryptopipe cross-check`).

Minutes the exchange confirmed had no trade are left out (their close is the previous one's), so
a run of diverging minutes is broken by them rather than stretched.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from common.topics import EXCHANGES

UTC = timezone.utc

# Consecutive diverging minutes of one pair form one window: the classic gaps-and-islands
# grouping (minute minus its rank is constant along a run of consecutive minutes).
_FIND = """
WITH pairs AS (
    SELECT a.symbol, a.open_time, a.close AS close_a, b.close AS close_b,
           abs(a.close - b.close) / ((a.close + b.close) / 2) * 10000 AS bps
      FROM candles_1m a
      JOIN candles_1m b ON b.exchange = %(b)s AND b.symbol = a.symbol AND b.open_time = a.open_time
     WHERE a.exchange = %(a)s AND a.open_time >= %(start)s AND a.open_time < %(end)s
       AND b.open_time >= %(start)s AND b.open_time < %(end)s
       AND NOT a.confirmed_empty AND NOT b.confirmed_empty AND a.close > 0 AND b.close > 0
), flagged AS (
    SELECT p.*, p.open_time - row_number() OVER (PARTITION BY p.symbol ORDER BY p.open_time)
                              * interval '1 minute' AS run
      FROM pairs p WHERE p.bps > %(threshold)s
), runs AS (
    SELECT symbol, run, min(open_time) AS window_start, max(open_time) + interval '1 minute' AS window_end
      FROM flagged GROUP BY symbol, run HAVING count(*) >= %(min_minutes)s
)
SELECT r.symbol, r.window_start, r.window_end, w.open_time, round(w.bps, 2), w.close_a, w.close_b
  FROM runs r
  CROSS JOIN LATERAL (SELECT f.open_time, f.bps, f.close_a, f.close_b FROM flagged f
                       WHERE f.symbol = r.symbol AND f.run = r.run
                       ORDER BY f.bps DESC, f.open_time LIMIT 1) w
 ORDER BY r.symbol, r.window_start
"""


@dataclass(frozen=True)
class Divergence:
    symbol: str
    exchange_a: str
    exchange_b: str
    window_start: datetime
    window_end: datetime          # exclusive
    max_bps: Decimal
    max_at: datetime
    close_a: Decimal
    close_b: Decimal
    threshold_bps: Decimal

    @property
    def minutes(self) -> int:
        return int((self.window_end - self.window_start).total_seconds() // 60)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["minutes"] = self.minutes
        return {k: (v.isoformat() if isinstance(v, datetime) else str(v) if isinstance(v, Decimal) else v)
                for k, v in d.items()}


def exchange_pairs(exchanges=EXCHANGES) -> list[tuple[str, str]]:
    return list(itertools.combinations(sorted(exchanges), 2))


def find_divergences(cur, start: datetime, end: datetime, threshold_bps, min_minutes: int,
                     exchanges=EXCHANGES) -> list[Divergence]:
    threshold = Decimal(str(threshold_bps))
    found = []
    for a, b in exchange_pairs(exchanges):
        cur.execute(_FIND, {"a": a, "b": b, "start": start, "end": end, "threshold": threshold,
                            "min_minutes": int(min_minutes)})
        for symbol, w_start, w_end, max_at, bps, close_a, close_b in cur.fetchall():
            found.append(Divergence(symbol, a, b, w_start, w_end, bps, max_at, close_a, close_b, threshold))
    return found


def _merge(cur, d: Divergence) -> bool:
    """Merge `d` with the recorded windows of its pair that overlap or touch it; True if it
    changed anything."""
    cur.execute("""SELECT id, window_start, window_end, max_bps, max_at, close_a, close_b
                     FROM price_divergences
                    WHERE symbol = %s AND exchange_a = %s AND exchange_b = %s
                      AND window_start <= %s AND window_end >= %s
                    ORDER BY window_start FOR UPDATE""",
                (d.symbol, d.exchange_a, d.exchange_b, d.window_end, d.window_start))
    rows = cur.fetchall()
    start = min([d.window_start, *(r[1] for r in rows)])
    end = max([d.window_end, *(r[2] for r in rows)])
    best = (d.max_bps, d.max_at, d.close_a, d.close_b)
    for _id, _s, _e, bps, at, ca, cb in rows:
        if bps > best[0]:
            best = (bps, at, ca, cb)
    if len(rows) == 1 and (rows[0][1], rows[0][2]) == (start, end) and rows[0][3] == best[0]:
        return False                      # already recorded as it is
    if rows:
        cur.execute("DELETE FROM price_divergences WHERE id = ANY(%s)", ([r[0] for r in rows],))
    cur.execute("""INSERT INTO price_divergences (symbol, exchange_a, exchange_b, window_start, window_end,
                                                 minutes, max_bps, max_at, close_a, close_b, threshold_bps)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                (d.symbol, d.exchange_a, d.exchange_b, start, end, int((end - start).total_seconds() // 60),
                 best[0], best[1], best[2], best[3], d.threshold_bps))
    return True


def record_divergences(conn, divergences: list[Divergence]) -> int:
    """Record (merge) every divergence in one transaction; returns how many rows changed."""
    changed = 0
    with conn, conn.cursor() as cur:
        # two runs at once (a manual trigger beside the schedule) must not both insert a window
        cur.execute("SELECT pg_advisory_xact_lock(727276)")
        for d in divergences:
            changed += _merge(cur, d)
    return changed


def cross_check(conn, start: datetime, end: datetime, threshold_bps, min_minutes: int) -> dict:
    """Find and record the divergences of [start, end); returns the run's figures."""
    with conn, conn.cursor() as cur:
        found = find_divergences(cur, start, end, threshold_bps, min_minutes)
    changed = record_divergences(conn, found)
    return {"start": start.isoformat(), "end": end.isoformat(), "threshold_bps": str(threshold_bps),
            "min_minutes": int(min_minutes), "divergences": len(found), "rows_changed": changed,
            "windows": [d.to_dict() for d in found]}


def check_window(end: datetime, hours: float, lookback_hours: float) -> tuple[datetime, datetime]:
    """[start, end) in whole minutes for a run covering `hours` up to `end`, reaching back a further
    `lookback_hours` so that a window crossing the previous run's edge is seen whole."""
    end = end.astimezone(UTC).replace(second=0, microsecond=0)
    return end - timedelta(hours=hours + lookback_hours), end


def run(end: datetime, hours: float = 1.0, lookback_hours: float = 1.0, threshold_bps=None,
        min_minutes: int | None = None, dsn: str | None = None) -> dict:
    """One run over the `hours` before `end` (plus the lookback), with the settings' threshold and
    run length unless given; connects with the project's settings."""
    from common.db import connect
    from common.settings import get_settings

    s = get_settings()
    start, end = check_window(end, hours, lookback_hours)
    conn = connect(dsn)
    try:
        return cross_check(conn, start, end,
                           s.cross_check_threshold_bps if threshold_bps is None else threshold_bps,
                           s.cross_check_min_minutes if min_minutes is None else min_minutes)
    finally:
        conn.close()


def main(argv: list[str]) -> int:
    """`cryptopipe cross-check [--hours H] [--lookback-hours L] [--threshold-bps B] [--min-minutes M]`"""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="cryptopipe cross-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--hours", type=float, default=1.0, help="hours checked, up to now (default 1)")
    p.add_argument("--lookback-hours", type=float, default=0.0)
    p.add_argument("--threshold-bps", type=float, default=None, help="default: CROSS_CHECK_THRESHOLD_BPS (50)")
    p.add_argument("--min-minutes", type=int, default=None, help="default: CROSS_CHECK_MIN_MINUTES (3)")
    args = p.parse_args(argv)
    if not 0 < args.hours <= 168 or not 0 <= args.lookback_hours <= 24:
        p.error("--hours must be in (0, 168] and --lookback-hours in [0, 24]")
    if args.threshold_bps is not None and not 0 < args.threshold_bps <= 10000:
        p.error("--threshold-bps must be in (0, 10000]")
    if args.min_minutes is not None and not 1 <= args.min_minutes <= 1440:
        p.error("--min-minutes must be in [1, 1440]")
    summary = run(datetime.now(UTC), args.hours, args.lookback_hours, args.threshold_bps, args.min_minutes)
    print(json.dumps(summary, indent=2))
    return 0
