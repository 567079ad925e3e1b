"""The pipeline's health as stored in Postgres: read-only queries shared by the prices server
(`GET /v1/health`, the page's coverage strip) and the operators' health view (Airflow plugin).

Every reader takes a DB-API cursor (psycopg2: the API's pool or a PostgresHook connection) and
returns plain JSON values: times as ISO-8601 UTC text, numbers from `numeric` as decimal text.
Tables added by later migrations (`candle_checks`, `price_divergences`) may be absent: their
readers answer `None` instead of failing. Consumer-group lag comes from Kafka, not from here
(`common.consumer_lag`).
"""
from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

from common.models import decimal_text, iso_utc

# a session that has not sent its 5-s heartbeat for this long is not "connected now"
SESSION_FRESH_S = 30
COVERAGE_BUCKET_MIN = 15
MAX_SYMBOL_GROUPS = 8          # heat-map rows: the quote assets with most symbols, the rest "other"


def jsonable(value):
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def _rows(cur) -> list[dict]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, (jsonable(v) for v in row))) for row in cur.fetchall()]


def table_exists(cur, name: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
    return cur.fetchone()[0]


def sessions(cur, exchanges) -> dict[str, dict]:
    """Per exchange: websocket sessions connected now, sessions alive at some time in the last
    24 h, disconnects in the last 24 h and the newest disconnect's reason."""
    cur.execute("""
        SELECT exchange,
               count(*) FILTER (WHERE disconnected_at IS NULL
                                  AND last_seen_at > now() - make_interval(secs => %s)) AS connected_now,
               count(*) FILTER (WHERE coalesce(disconnected_at, last_seen_at) > now() - interval '24 hours')
                   AS sessions_24h,
               count(*) FILTER (WHERE disconnected_at > now() - interval '24 hours') AS disconnects_24h,
               max(disconnected_at) AS last_disconnect_at
          FROM stream_sessions WHERE exchange = ANY(%s) GROUP BY exchange""", (SESSION_FRESH_S, list(exchanges)))
    out = {ex: {"connected_now": 0, "sessions_24h": 0, "disconnects_24h": 0, "last_disconnect_at": None,
                "last_disconnect_reason": None} for ex in exchanges}
    for row in _rows(cur):
        out[row.pop("exchange")].update(row)
    cur.execute("""SELECT DISTINCT ON (exchange) exchange, reason FROM stream_sessions
                    WHERE exchange = ANY(%s) AND disconnected_at IS NOT NULL
                    ORDER BY exchange, disconnected_at DESC""", (list(exchanges),))
    for ex, reason in cur.fetchall():
        out[ex]["last_disconnect_reason"] = reason
    return out


def tick_rates(cur, exchanges, seconds: int = 10) -> dict[str, dict]:
    """Per exchange: stored ticks per second over the last `seconds` (event time, the newest
    second left out: still arriving), and the newest price's age."""
    out = {}
    for ex in exchanges:
        # per exchange, so each daily partition answers from its (exchange, event_time) index
        cur.execute("""SELECT count(*) FROM ticks WHERE exchange = %s
                          AND event_time >= now() - make_interval(secs => %s + 1)
                          AND event_time < now() - interval '1 second'""", (ex, seconds))
        n = cur.fetchone()[0]
        cur.execute("SELECT max(event_time), count(*) FROM latest_prices WHERE exchange = %s", (ex,))
        newest, symbols = cur.fetchone()
        cur.execute("SELECT extract(epoch FROM now() - %s::timestamptz)", (newest,))
        age = cur.fetchone()[0]
        out[ex] = {"ticks_per_s": round(n / seconds, 1), "newest_tick_at": jsonable(newest),
                   "newest_tick_age_s": None if age is None else round(float(age), 1), "symbols": symbols}
    return out


def gaps_by_status(cur, exchanges) -> dict[str, dict]:
    """Per exchange and status: how many gaps, and how many minutes they span (every gap since
    the history began: a filled gap is the record of what the backfill repaired)."""
    cur.execute("""SELECT exchange, status, count(*),
                          round(sum(extract(epoch FROM gap_end - gap_start)) / 60)::bigint
                     FROM gaps WHERE exchange = ANY(%s) GROUP BY exchange, status""", (list(exchanges),))
    out = {ex: {s: {"gaps": 0, "minutes": 0} for s in ("open", "backfilling", "filled", "failed")}
           for ex in exchanges}
    for ex, status, n, minutes in cur.fetchall():
        out[ex][status] = {"gaps": n, "minutes": int(minutes or 0)}
    return out


def recent_gaps(cur, exchange: str | None, status: str | None, since: datetime, limit: int) -> list[dict]:
    cur.execute("""SELECT id, exchange, symbol, gap_start, gap_end, status, kind, detected_at, filled_at,
                          rows_filled, attempts, error
                     FROM gaps
                    WHERE (%(ex)s::text IS NULL OR exchange = %(ex)s)
                      AND (%(st)s::text IS NULL OR status = %(st)s) AND gap_end > %(since)s
                    ORDER BY gap_start DESC, id DESC LIMIT %(limit)s""",
                {"ex": exchange, "st": status, "since": since, "limit": limit})
    return _rows(cur)


def coverage(cur, exchange: str, hours: int = 24, bucket_min: int = COVERAGE_BUCKET_MIN) -> dict:
    """The last `hours` of one exchange in buckets of `bucket_min` minutes:
    - `streamed`: the fraction of the bucket some websocket session covered;
    - `gap_minutes`: minutes of recorded gaps overlapping it, by status;
    - `candle_minutes`: minutes with at least one stored candle.
    And the heat map: per symbol group (quote asset) and hour, the share of (symbol, minute)
    candles stored, counted against the group's symbols seen in the window."""
    cur.execute("SELECT date_bin(make_interval(mins => %s), now() - make_interval(hours => %s), "
                "timestamptz '2000-01-01'), now()", (bucket_min, hours))
    since, now = cur.fetchone()
    step = timedelta(minutes=bucket_min)
    starts = []
    t = since
    while t < now:
        starts.append(t)
        t += step
    cur.execute("""
        WITH covered AS (
            SELECT range_agg(tstzrange(coalesce(subscribed_at, connected_at),
                                       greatest(coalesce(disconnected_at, last_seen_at),
                                                coalesce(subscribed_at, connected_at)))) AS m
              FROM stream_sessions
             WHERE exchange = %(ex)s AND coalesce(disconnected_at, last_seen_at) > %(since)s
        ), buckets AS (
            SELECT b, tstzrange(b, b + make_interval(mins => %(step)s)) AS r
              FROM generate_series(%(since)s::timestamptz, %(now)s::timestamptz, make_interval(mins => %(step)s)) b
        )
        SELECT b.b, coalesce((SELECT sum(extract(epoch FROM upper(x) - lower(x)))
                                FROM unnest((SELECT m FROM covered) * multirange(b.r)) x), 0)
          FROM buckets b ORDER BY b.b""", {"ex": exchange, "since": since, "now": now, "step": bucket_min})
    streamed = {b: float(secs) / (bucket_min * 60) for b, secs in cur.fetchall()}
    cur.execute("""
        SELECT b, g.status, sum(extract(epoch FROM least(g.gap_end, b + make_interval(mins => %(step)s))
                                                 - greatest(g.gap_start, b)) / 60)
          FROM generate_series(%(since)s::timestamptz, %(now)s::timestamptz, make_interval(mins => %(step)s)) b
          JOIN gaps g ON g.exchange = %(ex)s AND g.gap_start < b + make_interval(mins => %(step)s)
                     AND g.gap_end > b
         GROUP BY b, g.status""", {"ex": exchange, "since": since, "now": now, "step": bucket_min})
    gap_minutes: dict = {}
    for b, status, minutes in cur.fetchall():
        gap_minutes.setdefault(b, {})[status] = round(float(minutes), 1)
    cur.execute("""
        SELECT date_bin(make_interval(mins => %(step)s), open_time, %(since)s) AS b,
               split_part(symbol, '-', 2) AS grp, count(*) AS candles, count(DISTINCT open_time) AS minutes,
               min(open_time) AS first
          FROM candles_1m WHERE exchange = %(ex)s AND open_time >= %(since)s
         GROUP BY 1, 2""", {"ex": exchange, "since": since, "step": bucket_min})
    per_bucket = cur.fetchall()
    cur.execute("""SELECT split_part(symbol, '-', 2), count(DISTINCT symbol) FROM candles_1m
                    WHERE exchange = %s AND open_time >= %s GROUP BY 1""", (exchange, since))
    group_symbols = dict(cur.fetchall())
    candle_minutes: dict = {}
    for b, _grp, _n, minutes, _first in per_bucket:
        candle_minutes[b] = max(candle_minutes.get(b, 0), minutes)
    strip = [{"start": iso_utc(b), "streamed": round(streamed.get(b, 0.0), 3),
              "gap_minutes": gap_minutes.get(b, {}), "candle_minutes": candle_minutes.get(b, 0)} for b in starts]
    return {"exchange": exchange, "since": iso_utc(since), "until": iso_utc(now), "bucket_minutes": bucket_min,
            "buckets": strip, "heatmap": _heatmap(per_bucket, group_symbols, since, now)}


def _heatmap(per_bucket, group_symbols: dict[str, int], since: datetime, now: datetime) -> dict:
    ranked = sorted(group_symbols, key=lambda g: (-group_symbols[g], g))
    shown = ranked[:MAX_SYMBOL_GROUPS]
    group_of = {g: (g if g in shown else "other") for g in ranked}
    rows = shown + (["other"] if len(ranked) > len(shown) else [])
    symbols = {r: sum(n for g, n in group_symbols.items() if group_of[g] == r) for r in rows}
    first_hour = since.replace(minute=0, second=0, microsecond=0)
    hours = []
    t = first_hour
    while t < now:
        hours.append(t)
        t += timedelta(hours=1)
    # hours before the exchange's first stored candle in the window are "no history yet", not
    # missing: the strip and the page say so instead of painting them red
    first = min((f for _b, _g, _n, _m, f in per_bucket), default=now)
    stored: dict = {}
    for b, grp, n, _m, _f in per_bucket:
        key = (group_of.get(grp, "other"), b.replace(minute=0, second=0, microsecond=0))
        stored[key] = stored.get(key, 0) + n
    cells = []
    for r in rows:
        line = []
        for h in hours:
            lo, hi = max(h, since, first), min(h + timedelta(hours=1), now)
            expected = symbols[r] * max(0.0, (hi - lo).total_seconds() / 60)
            line.append(None if expected < 1 else round(min(1.0, stored.get((r, h), 0) / expected), 3))
        cells.append(line)
    return {"groups": rows, "group_symbols": [symbols[r] for r in rows], "hours": [iso_utc(h) for h in hours],
            "stored_share": cells}


def recent_divergences(cur, hours: int = 24, limit: int = 100) -> list[dict] | None:
    """`price_divergences` whose window ended in the last `hours`, newest first (None: no table)."""
    if not table_exists(cur, "price_divergences"):
        return None
    cur.execute("""SELECT symbol, exchange_a, exchange_b, window_start, window_end, minutes, max_bps, max_at,
                          close_a, close_b, threshold_bps, detected_at
                     FROM price_divergences WHERE window_end > now() - make_interval(hours => %s)
                    ORDER BY window_end DESC, symbol LIMIT %s""", (hours, limit))
    return _rows(cur)


def recent_candle_checks(cur, limit: int = 50) -> list[dict] | None:
    """The newest reconciliation checks (`candle_checks`, migration 007: exchange, minute, symbols
    compared and differing, largest relative differences), whatever columns that table has;
    None while it does not exist."""
    if not table_exists(cur, "candle_checks"):
        return None
    cur.execute("""SELECT column_name FROM information_schema.columns
                    WHERE table_schema = current_schema() AND table_name = 'candle_checks'""")
    columns = {r[0] for r in cur.fetchall()}
    order = next((c for c in ("minute", "checked_at", "open_time", "created_at") if c in columns), None)
    # column names come from the catalog, never from a request: safe to place in the statement
    cur.execute("SELECT * FROM candle_checks" + (f' ORDER BY "{order}" DESC' if order else "") + " LIMIT %s",
                (limit,))
    return _rows(cur)


def recent_supervisor_checks(cur, limit: int = 20) -> dict:
    """The newest verdict per program, and the newest checks that were not 'healthy'."""
    cur.execute("""SELECT DISTINCT ON (program) program, checked_at, state, verdict, action, outcome, reason
                     FROM supervisor_checks ORDER BY program, checked_at DESC, id DESC""")
    latest = _rows(cur)
    cur.execute("""SELECT checked_at, program, state, verdict, action, outcome, state_after, reason
                     FROM supervisor_checks WHERE verdict <> 'healthy'
                    ORDER BY checked_at DESC, id DESC LIMIT %s""", (limit,))
    return {"latest": latest, "problems": _rows(cur)}


def snapshot(cur, exchanges, consumer_lag) -> dict:
    """Everything the health view shows (and `GET /v1/health` answers), in one JSON document.
    `consumer_lag`: `common.consumer_lag.lag_report(...)`'s answer (Kafka is not read here)."""
    cur.execute("SELECT now()")
    now = cur.fetchone()[0]
    sess, rates, gaps = sessions(cur, exchanges), tick_rates(cur, exchanges), gaps_by_status(cur, exchanges)
    return {
        "generated_at": iso_utc(now),
        "exchanges": {ex: {"sessions": sess[ex], "ticks": rates[ex], "gaps": gaps[ex]} for ex in exchanges},
        "consumer_lag": consumer_lag,
        "coverage": {ex: coverage(cur, ex) for ex in exchanges},
        "divergences": recent_divergences(cur),
        "candle_checks": recent_candle_checks(cur),
        "supervisor_checks": recent_supervisor_checks(cur),
    }
