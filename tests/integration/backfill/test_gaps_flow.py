"""Outage -> detect_gaps finds it (edges included) -> fill_gap fills it with the true candles -> filled.

The stream side (stream_sessions, ticks, stream candles) is written the way the extractor and
the loader write it, for a private historical window; the REST side is the simulator.
"""
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from backfill.gaps import detect_gaps, fill_gap, list_gaps, open_gaps
from tests.integration.backfill.conftest import assert_matches_truth, ms, pick_symbols, stored_candles

pytestmark = pytest.mark.integration
M = timedelta(minutes=1)
S = timedelta(seconds=1)


def write_stream_side(pg, w, exchange, symbols, truth, *, outage, silent, edges):
    T = w.start
    s1, s2 = f"bftest-{uuid.uuid4().hex[:12]}", f"bftest-{uuid.uuid4().hex[:12]}"
    w.conn_ids += [s1, s2]
    with pg.cursor() as cur:
        cur.execute("INSERT INTO stream_sessions (conn_id, exchange, connected_at, subscribed_at, last_seen_at, "
                    "disconnected_at, reason) VALUES (%s, %s, %s, %s, %s, %s, 'abort'), "
                    "(%s, %s, %s, %s, %s, NULL, NULL)",
                    (s1, exchange, T - 5 * M, T - 5 * M, outage[0], outage[0],
                     s2, exchange, outage[1] - 10 * S, outage[1], T + 41 * M + 20 * S))
        for day in sorted({(T + i * M).date() for i in range(-5, 45)}):
            cur.execute("SELECT ensure_ticks_partition(%s)", (day,))
        for symbol in symbols:
            ticks, candles = [], []
            for i in range(-5, 40):
                t = T + i * M
                true = truth[symbol].get(ms(t))
                seen = not (outage[0] < t + M and t < outage[1]) and t not in silent
                if seen:
                    ticks.append((exchange, symbol, t + 30 * S, Decimal("1"), t + 30 * S))
                if i < 0 or (not seen and t not in edges):
                    continue
                if true is None or Decimal(true["volume"]) == 0:
                    continue            # no trade: the stream has no candle for it
                if t in edges:          # partly seen: an incomplete stream candle, to be replaced
                    candles.append((exchange, symbol, t, true["open"], true["open"], true["open"], true["open"]))
                else:
                    candles.append((exchange, symbol, t, true["open"], true["high"], true["low"], true["close"]))
            cur.executemany("INSERT INTO ticks (exchange, symbol, event_time, price, received_at) "
                            "VALUES (%s, %s, %s, %s, %s)", ticks)
            cur.executemany("INSERT INTO candles_1m (exchange, symbol, open_time, open, high, low, close, source, "
                            "tick_count) VALUES (%s, %s, %s, %s, %s, %s, %s, 'stream', 1)", candles)


@pytest.mark.parametrize("exchange", ["binance", "kucoin"])
def test_outage_is_detected_filled_edges_included_and_never_detected_again(exchange, sim_rest, window, pg,
                                                                           monkeypatch):
    from common.settings import get_settings

    ctl = sim_rest.control
    w = window(40)
    T = w.start
    symbols = w.use(exchange, pick_symbols(ctl, exchange, 2, 1))
    # an exchange-wide gap is filled for every listed symbol within SYMBOLS: this test's only
    monkeypatch.setenv("SYMBOLS", ",".join(symbols))
    get_settings.cache_clear()
    truth = {s: {c["open_ms"]: c for c in ctl.candles(exchange, s, ms(T), ms(w.end) - 1)} for s in symbols}
    outage = (T + 10 * M + 20 * S, T + 16 * M + 40 * S)         # the simulator refused connections
    silent = {T + 24 * M, T + 25 * M}                           # a session up, but not one tick
    edges = {T + 10 * M, T + 16 * M, T + 23 * M, T + 26 * M}
    write_stream_side(pg, w, exchange, symbols, truth, outage=outage, silent=silent, edges=edges)

    now = T + 41 * M + 30 * S
    found = detect_gaps(now, lookback=timedelta(minutes=46, seconds=30), exchanges=[exchange])
    mine = [g for g in found if g.symbol in (None, *symbols) and T - 5 * M <= g.gap_start < w.end]
    wide = sorted((g.gap_start, g.gap_end, g.kind) for g in mine if g.symbol is None)
    assert wide == [(T + 10 * M, T + 17 * M, "uncovered"), (T + 23 * M, T + 27 * M, "silence")]
    per_symbol = [g for g in mine if g.symbol is not None]
    assert all(g.kind == "missing_candles" and g.status == "open" for g in per_symbol)
    # every no-trade minute outside the outage/silence is in a per-symbol gap, nothing else is
    for s in symbols:
        stored = stored_candles(pg, exchange, s, T, w.end)
        missing = {T + i * M for i in range(40)} - set(stored)
        in_wide = {m for m in missing if any(a <= m < b for a, b, _ in wide)}
        covered = {m for m in missing - in_wide
                   if any(g.symbol == s and g.gap_start <= m < g.gap_end for g in per_symbol)}
        assert covered == missing - in_wide, s

    # detecting again records nothing new
    assert [g for g in detect_gaps(now, lookback=timedelta(minutes=46, seconds=30), exchanges=[exchange])
            if g.symbol in (None, *symbols) and T - 5 * M <= g.gap_start < w.end] == []

    # fill every open gap of this window
    todo = [g for g in open_gaps(exchange, limit=10_000) if g.id in {x.id for x in mine}]
    assert len(todo) == len(mine)
    for gap in todo:
        summary = fill_gap(gap)
        assert summary is not None and summary.ok, summary.failures
    statuses = {g.id: g for g in list_gaps(exchange=exchange, limit=10_000) if g.id in {x.id for x in mine}}
    assert {g.status for g in statuses.values()} == {"filled"}
    assert all(g.rows_filled is not None and g.filled_at is not None for g in statuses.values())

    # every minute of the outage and the silence, edges included, holds the true REST candle
    for a, b, _ in wide:
        assert_matches_truth(pg, ctl, exchange, symbols, a, b, source="rest")
    # and the whole window now has every minute, each with the true prices
    for s in symbols:
        stored = stored_candles(pg, exchange, s, T, w.end)
        assert len(stored) == 40, s
        for t, (o, h, l, c, v, empty, src) in stored.items():
            true = truth[s].get(ms(t))
            if true is None:
                assert empty and src == "rest"
            else:
                assert (o, h, l, c) == tuple(Decimal(true[k]) for k in ("open", "high", "low", "close")), (s, t)

    # and a filled gap is never found again
    again = detect_gaps(now, lookback=timedelta(minutes=46, seconds=30), exchanges=[exchange])
    assert [g for g in again if g.symbol in (None, *symbols) and T - 5 * M <= g.gap_start < w.end] == []


def test_ongoing_outage_extends_its_open_gap_and_lifecycle_is_enforced(stack, window, pg):
    from backfill.gaps import claim, get_gap, mark

    exchange = "kucoin"
    w = window(30)
    T = w.start
    symbols = w.use(exchange, ["ZZBF-USDT"])
    conn_id = f"bftest-{uuid.uuid4().hex[:12]}"
    w.conn_ids.append(conn_id)
    with pg.cursor() as cur:
        # a session that stopped heartbeating at T+10:20 without a disconnect event (killed extractor)
        cur.execute("INSERT INTO stream_sessions (conn_id, exchange, connected_at, subscribed_at, last_seen_at) "
                    "VALUES (%s, %s, %s, %s, %s)", (conn_id, exchange, T - 2 * M, T - 2 * M, T + 10 * M + 20 * S))
        for day in sorted({(T + i * M).date() for i in range(-2, 31)}):
            cur.execute("SELECT ensure_ticks_partition(%s)", (day,))
        cur.executemany("INSERT INTO ticks (exchange, symbol, event_time, price, received_at) VALUES (%s, %s, %s, 1, %s)",
                        [(exchange, symbols[0], T + i * M + S, T + i * M + S) for i in range(-2, 11)])
        cur.executemany("INSERT INTO candles_1m (exchange, symbol, open_time, open, high, low, close, source) "
                        "VALUES (%s, %s, %s, 1, 1, 1, 1, 'stream')", [(exchange, symbols[0], T + i * M) for i in range(-2, 11)])

    def mine(found):
        return [g for g in found if g.symbol in (None, *symbols) and T - 2 * M <= g.gap_start < w.end]

    first = mine(detect_gaps(T + 15 * M + 10 * S, lookback=timedelta(minutes=17), exchanges=[exchange]))
    assert [(g.symbol, g.gap_start, g.gap_end, g.kind) for g in first] == [(None, T + 10 * M, T + 14 * M, "uncovered")]
    later = mine(detect_gaps(T + 20 * M + 10 * S, lookback=timedelta(minutes=22), exchanges=[exchange]))
    assert [(g.id, g.gap_start, g.gap_end) for g in later] == [(first[0].id, T + 10 * M, T + 19 * M)]

    gap_id = first[0].id
    assert claim(gap_id) and not claim(gap_id)             # one owner
    assert get_gap(gap_id).status == "backfilling"
    assert mark(gap_id, "failed", error="boom").error == "boom"
    assert claim(gap_id)                                   # a failed gap can be retried
    filled = mark(gap_id, "filled", rows_filled=9)
    assert (filled.status, filled.rows_filled, filled.error) == ("filled", 9, None) and filled.filled_at
    with pytest.raises(ValueError, match="is filled; it cannot become open"):
        mark(gap_id, "open")
    with pytest.raises(LookupError):
        mark(10**12, "filled")
    # a backfilling/filled gap is not extended: later outage time becomes a new gap
    newer = mine(detect_gaps(T + 25 * M + 10 * S, lookback=timedelta(minutes=27), exchanges=[exchange]))
    assert [(g.gap_start, g.gap_end, g.status) for g in newer] == [(T + 19 * M, T + 24 * M, "open")]


def test_a_shard_down_while_the_others_stream_is_a_gap_for_its_symbols_only(stack, window, pg, monkeypatch):
    """Two connections of one extractor (sharded symbols): shard 2 is down 10:20-16:40 while
    shard 1 streams. The exchange was covered, so no exchange-wide gap; shard 2's symbol gets a
    gap with both edge minutes, shard 1's none; detecting again adds nothing."""
    exchange = "kucoin"
    w = window(30)
    T = w.start
    a, b = w.use(exchange, ["ZZSA-USDT", "ZZSB-USDT"])
    from common.settings import get_settings
    monkeypatch.setenv("SYMBOLS", f"{a},{b}")       # what the sharded extractor streams
    get_settings.cache_clear()
    try:
        _shard_down(exchange, w, T, a, b, pg)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def _shard_down(exchange, w, T, a, b, pg):
    ids = [f"bftest-{uuid.uuid4().hex[:12]}" for _ in range(3)]
    w.conn_ids += ids
    down, up = T + 10 * M + 20 * S, T + 16 * M + 40 * S
    with pg.cursor() as cur:
        cur.executemany("INSERT INTO stream_sessions (conn_id, exchange, connected_at, subscribed_at, last_seen_at, "
                        "disconnected_at, reason, symbols) VALUES (%s, %s, %s, %s, %s, %s, 'x', %s)",
                        [(ids[0], exchange, T - 2 * M, T - 2 * M, T + 31 * M, T + 31 * M, [a]),
                         (ids[1], exchange, T - 2 * M, T - 2 * M, down, down, [b]),
                         (ids[2], exchange, up - 5 * S, up, T + 31 * M, T + 31 * M, [b])])
        for day in sorted({(T + i * M).date() for i in range(-2, 31)}):
            cur.execute("SELECT ensure_ticks_partition(%s)", (day,))
        seen = {a: [T + i * M + 30 * S for i in range(-2, 31)],
                b: [T + i * M + 30 * S for i in range(-2, 31) if not 10 <= i <= 16] + [T + 10 * M + 5 * S,
                                                                                     T + 16 * M + 50 * S]}
        for symbol, times in seen.items():
            cur.executemany("INSERT INTO ticks (exchange, symbol, event_time, price, received_at) "
                            "VALUES (%s, %s, %s, 1, %s)", [(exchange, symbol, t, t) for t in times])
            cur.executemany("INSERT INTO candles_1m (exchange, symbol, open_time, open, high, low, close, source) "
                            "VALUES (%s, %s, %s, 1, 1, 1, 1, 'stream') ON CONFLICT DO NOTHING",
                            [(exchange, symbol, t.replace(second=0)) for t in times])

    def mine(found):
        return sorted(((g.symbol, g.gap_start, g.gap_end, g.kind) for g in found
                       if g.symbol in (None, a, b) and T - 2 * M <= g.gap_start < w.end), key=str)

    now = T + 31 * M
    found = mine(detect_gaps(now, lookback=timedelta(minutes=33), exchanges=[exchange]))
    assert found == [(b, T + 10 * M, T + 17 * M, "missing_candles,uncovered")]
    assert mine(detect_gaps(now, lookback=timedelta(minutes=33), exchanges=[exchange])) == []


def test_start_up_minutes_before_and_during_the_first_session_are_found_and_filled(sim_rest, window, pg, monkeypatch):
    """Issue 13, edges: the first detection runs at T+3:19, before the first session (T+3:24);
    the next one at T+18:19. Between them they must find every minute of the lookback, the
    minute before the stream began (T+2) and the partly seen T+3 included, and the backfills
    make them the exchange's candles (the partly seen minute's stream candle replaced, and its
    divergence recorded)."""
    from common.settings import get_settings

    exchange = "kucoin"
    ctl = sim_rest.control
    w = window(40)
    T = w.start + 20 * M                       # the window holds the 20 minutes of lookback before T
    symbols = w.use(exchange, pick_symbols(ctl, exchange, 2, 0))
    monkeypatch.setenv("SYMBOLS", ",".join(symbols))
    get_settings.cache_clear()
    truth = {s: {c["open_ms"]: c for c in ctl.candles(exchange, s, ms(w.start), ms(w.end) - 1)} for s in symbols}
    conn_id = f"bftest-{uuid.uuid4().hex[:12]}"
    w.conn_ids.append(conn_id)
    began = T + 3 * M + 24 * S
    with pg.cursor() as cur:
        cur.execute("INSERT INTO stream_sessions (conn_id, exchange, connected_at, subscribed_at, last_seen_at) "
                    "VALUES (%s, %s, %s, %s, %s)", (conn_id, exchange, began - S, began, T + 18 * M + 10 * S))
        for day in sorted({(T + i * M).date() for i in range(0, 20)}):
            cur.execute("SELECT ensure_ticks_partition(%s)", (day,))
        for symbol in symbols:
            cur.executemany("INSERT INTO ticks (exchange, symbol, event_time, price, received_at) VALUES (%s, %s, %s, 1, %s)",
                            [(exchange, symbol, T + i * M + 40 * S, T + i * M + 40 * S) for i in range(3, 18)])
            rows = []
            for i in range(3, 18):
                true = truth[symbol][ms(T + i * M)]
                # the first minute saw only its last 36 seconds: its open is the first tick it saw
                open_ = true["close"] if i == 3 else true["open"]
                rows.append((exchange, symbol, T + i * M, open_, true["high"], true["low"], true["close"]))
            cur.executemany("INSERT INTO candles_1m (exchange, symbol, open_time, open, high, low, close, source) "
                            "VALUES (%s, %s, %s, %s, %s, %s, %s, 'stream')", rows)

    def mine(found):
        return sorted((g.symbol, g.gap_start, g.gap_end, g.kind) for g in found
                      if g.symbol in (None, *symbols) and w.start - 5 * M <= g.gap_start < w.end)

    lookback = timedelta(minutes=20)
    first = detect_gaps(T + 3 * M + 19 * S, lookback=lookback, exchanges=[exchange])
    assert mine(first) == [(None, T - 17 * M, T + 2 * M, "uncovered")]
    for gap in first:
        if mine([gap]):
            assert fill_gap(gap).ok
    second = detect_gaps(T + 18 * M + 19 * S, lookback=lookback, exchanges=[exchange])
    # the horizon (T-2 .. T+17) still reaches back past the first session: T+2 and T+3 are found
    assert mine(second) == [(None, T + 2 * M, T + 4 * M, "uncovered")]
    for gap in second:
        if mine([gap]):
            assert fill_gap(gap).ok
    assert_matches_truth(pg, ctl, exchange, symbols, T - 17 * M, T + 4 * M, source="rest")
    with pg.cursor() as cur:
        cur.execute("SELECT symbols_compared, symbols_differing FROM candle_checks WHERE exchange = %s AND minute = %s",
                    (exchange, T + 3 * M))
        compared, differing = cur.fetchone()
    assert compared == 2 and differing == sum(truth[s][ms(T + 3 * M)]["open"] != truth[s][ms(T + 3 * M)]["close"]
                                              for s in symbols)
    assert mine(detect_gaps(T + 18 * M + 19 * S, lookback=lookback, exchanges=[exchange])) == []
