"""Reconciliation against the simulator's REST API and the real Postgres and S3.

The stream side (a session, stream candles as the loader writes them: no volume) is written for a
private historical window, some candles made to differ from the exchange's, some left out; the
window's reconcile_state is set here and restored afterwards.
"""
import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from backfill.reconcile import read_state, reconcile_exchange
from common.candle_checks import divergence
from common.s3 import backfill_response_key
from tests.integration.backfill.conftest import assert_matches_truth, ms, pick_symbols, read_archive, stored_candles

pytestmark = pytest.mark.integration
M = timedelta(minutes=1)
S = timedelta(seconds=1)
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def own_state(pg):
    """reconcile_state belongs to this test while it runs: restored afterwards."""
    with pg.cursor() as cur:
        cur.execute("SELECT exchange, reconciled_until, started_at, updated_at, last_run::text FROM reconcile_state")
        saved = cur.fetchall()

    def set_until(exchange, until):
        with pg.cursor() as cur:
            cur.execute("DELETE FROM reconcile_state WHERE exchange = %s", (exchange,))
            if until is not None:
                cur.execute("INSERT INTO reconcile_state (exchange, reconciled_until, started_at) VALUES (%s, %s, %s)",
                            (exchange, until, until))

    yield set_until
    with pg.cursor() as cur:
        cur.execute("DELETE FROM reconcile_state")
        for row in saved:
            cur.execute("INSERT INTO reconcile_state (exchange, reconciled_until, started_at, updated_at, last_run) "
                        "VALUES (%s, %s, %s, %s, %s::jsonb)", row)


def set_symbols(monkeypatch, symbols):
    from common.settings import get_settings

    monkeypatch.setenv("SYMBOLS", ",".join(symbols))
    get_settings.cache_clear()


def write_stream(pg, w, exchange, truth, minutes, *, skip=(), change=None):
    """A session from T-5 min, and a stream candle (truth OHLC, no volume) of every traded minute,
    but `skip` [(symbol, minute)] and with `change` {(symbol, minute): {field: value}}."""
    conn_id = f"rctest-{uuid.uuid4().hex[:12]}"
    w.conn_ids.append(conn_id)
    T = w.start
    with pg.cursor() as cur:
        cur.execute("INSERT INTO stream_sessions (conn_id, exchange, connected_at, subscribed_at, last_seen_at) "
                    "VALUES (%s, %s, %s, %s, %s)", (conn_id, exchange, T - 5 * M, T - 5 * M, T + minutes * M))
        rows = []
        for symbol, candles in truth.items():
            for i in range(minutes):
                t = T + i * M
                true = candles.get(ms(t))
                if true is None or Decimal(true["volume"]) == 0 or (symbol, t) in skip:
                    continue
                ohlc = {k: Decimal(true[k]) for k in ("open", "high", "low", "close")}
                ohlc.update((change or {}).get((symbol, t), {}))
                rows.append((exchange, symbol, t, ohlc["open"], ohlc["high"], ohlc["low"], ohlc["close"]))
        cur.executemany("INSERT INTO candles_1m (exchange, symbol, open_time, open, high, low, close, source, "
                        "tick_count) VALUES (%s, %s, %s, %s, %s, %s, %s, 'stream', 1)", rows)
        return rows


def checks(pg, exchange, start, end):
    with pg.cursor() as cur:
        cur.execute("SELECT minute, symbols_compared, symbols_differing, symbols_missing, max_open_rel_diff, "
                    "max_high_rel_diff, max_low_rel_diff, max_close_rel_diff, max_volume_rel_diff FROM candle_checks "
                    "WHERE exchange = %s AND minute >= %s AND minute < %s ORDER BY minute", (exchange, start, end))
        return {r[0]: r[1:] for r in cur.fetchall()}


@pytest.mark.parametrize("exchange", ["binance", "kucoin"])
def test_reconcile_makes_every_minute_the_exchanges_candle_records_divergence_and_resumes(
        exchange, sim_rest, window, pg, s3, stack, own_state, monkeypatch):
    ctl = sim_rest.control
    w = window(20)
    T = w.start
    listed = [s for s in ctl.symbols(exchange) if s["status"] == "TRADING"]
    liquid = [s["symbol"] for s in listed if not s["illiquid"]]
    a, b, outsider = liquid[:3]              # the outsider is not configured: never reconciled
    illiquid = next(s["symbol"] for s in listed if s["illiquid"])
    symbols = w.use(exchange, [a, b, illiquid])
    w.use(exchange, [outsider])
    set_symbols(monkeypatch, symbols)
    truth = {s: {c["open_ms"]: c for c in ctl.candles(exchange, s, ms(T), ms(w.end) - 1)}
             for s in (*symbols, outsider)}
    traded = lambda s, t: Decimal(truth[s].get(ms(t), {"volume": "0"})["volume"]) > 0  # noqa: E731
    # a minute both liquid symbols traded in: a's close 1 % off, b's high 0.2 % off
    bad = next(T + i * M for i in range(2, 8) if traded(a, T + i * M) and traded(b, T + i * M))
    true_close, true_high = (Decimal(truth[s][ms(bad)][k]) for s, k in ((a, "close"), (b, "high")))
    change = {(a, bad): {"close": true_close * Decimal("1.01")}, (b, bad): {"high": true_high * Decimal("1.002")}}
    lost = next(T + i * M for i in range(8, 10) if traded(a, T + i * M))          # the stream missed a's trades
    quiet = [T + i * M for i in range(20) if not traded(illiquid, T + i * M)]
    assert quiet, "the illiquid symbol traded in every minute"
    stream = write_stream(pg, w, exchange, truth, 20, skip={(a, lost)}, change=change)
    with pg.cursor() as cur:             # a minute a backfill already confirmed empty
        cur.execute("INSERT INTO candles_1m (exchange, symbol, open_time, source, confirmed_empty) "
                    "VALUES (%s, %s, %s, 'rest', true)", (exchange, illiquid, quiet[0]))
    own_state(exchange, T)

    now = T + 12 * M + 30 * S            # minutes closed at least 120 s ago: up to T+9
    first = reconcile_exchange(exchange, now=now, workers=3)
    assert first.status == "done", first.to_dict()
    assert (first.start, first.end, first.reconciled_until) == (T, T + 10 * M, T + 10 * M)
    assert first.symbols == 3 and read_state(exchange)["reconciled_until"] == T + 10 * M
    # every minute of every configured symbol is the exchange's candle; quiet minutes confirmed empty
    assert_matches_truth(pg, ctl, exchange, symbols, T, T + 10 * M, source="rest")
    assert stored_candles(pg, exchange, illiquid, quiet[0], quiet[0] + M)[quiet[0]][5:] == (True, "rest")
    # not yet reconciled, or not configured: still the stream's
    assert {r[6] for r in stored_candles(pg, exchange, a, T + 10 * M, w.end).values()} == {"stream"}
    assert {r[6] for r in stored_candles(pg, exchange, outsider, T, w.end).values()} == {"stream"}

    # candle_checks: per minute, the stream candles compared, those that differed, the trades missed
    got = checks(pg, exchange, T, w.end)
    for i in range(10):
        t = T + i * M
        compared = sum(1 for r in stream if r[2] == t and r[1] in symbols)
        missing = int(t == lost)
        if not compared and not missing:
            assert t not in got
            continue
        row = got[t]
        assert row[:3] == (compared, 2 if t == bad else 0, missing), (t, row)
        if t == bad:
            assert row[3:] == (0, Decimal("0.002"), 0, Decimal("0.01"), None)
        elif compared:
            assert row[3:] == (0, 0, 0, 0, None)
    assert not [t for t in got if t >= T + 10 * M]
    s = first.summary
    assert s["stream_compared"] == sum(got[t][0] for t in got) and s["stream_differing"] == 2
    assert s["stream_missing"] == 1
    # the REST responses used are kept in S3 like any backfill's
    doc = read_archive(s3, stack.s3_bucket, backfill_response_key(exchange, a, "1m", T, T + 10 * M))
    assert doc["responses"] and doc["responses"][0]["status"] == 200
    # the read side (--status, the Prometheus collector) adds the window up
    (view,) = divergence(pg, window_minutes=10, exchanges=[exchange], until=T + 10 * M)
    assert view["last_minute"] == max(got) and view["reconciled_until"] == T + 10 * M
    assert (view["compared"], view["differing"], view["missing"]) == \
        (s["stream_compared"], 2, 1)
    assert view["max_rel_diff"]["close"] == Decimal("0.01")

    # a second run at the same time finds nothing new to do
    again = reconcile_exchange(exchange, now=now)
    assert again.status == "up_to_date" and again.summary == {} and checks(pg, exchange, T, w.end) == got
    # later, it continues where the first stopped, at most max_minutes at a time
    later = reconcile_exchange(exchange, now=now + 15 * M, max_minutes=10)
    assert later.status == "done" and (later.start, later.end) == (T + 10 * M, T + 20 * M)
    assert_matches_truth(pg, ctl, exchange, symbols, T, w.end, source="rest")
    assert {r[6] for r in stored_candles(pg, exchange, outsider, T, w.end).values()} == {"stream"}
    assert checks(pg, exchange, T, T + 10 * M) == got                # nothing counted twice
    assert read_state(exchange)["reconciled_until"] == w.end


def test_reconcile_off_changes_nothing(sim_rest, window, pg, own_state, monkeypatch):
    exchange = "kucoin"
    w = window(10)
    symbols = w.use(exchange, pick_symbols(sim_rest.control, exchange, 1, 0))
    set_symbols(monkeypatch, symbols)
    truth = {s: {c["open_ms"]: c for c in sim_rest.control.candles(exchange, s, ms(w.start), ms(w.end) - 1)}
             for s in symbols}
    write_stream(pg, w, exchange, truth, 10)
    own_state(exchange, w.start)
    monkeypatch.setenv("RECONCILE", "off")
    from common.settings import get_settings
    get_settings.cache_clear()
    r = reconcile_exchange(exchange, now=w.end + 5 * M)
    assert (r.status, r.ok, r.message) == ("off", True, "reconciliation is off (RECONCILE=off)")
    assert read_state(exchange)["reconciled_until"] == w.start
    assert {v[6] for v in stored_candles(pg, exchange, symbols[0], w.start, w.end).values()} == {"stream"}


def cryptopipe(sim, *args, **env):
    full = dict(os.environ, BINANCE_REST_URL=sim.env["BINANCE_REST_URL"], KUCOIN_REST_URL=sim.env["KUCOIN_REST_URL"],
                **env)
    return subprocess.run([sys.executable, "-m", "cryptopipe", *args], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=300)


def test_cli_reconciles_reports_and_shows_status(sim_rest, window, pg, own_state):
    exchange = "binance"
    w = window(12)
    symbols = w.use(exchange, pick_symbols(sim_rest.control, exchange, 2, 0))
    truth = {s: {c["open_ms"]: c for c in sim_rest.control.candles(exchange, s, ms(w.start), ms(w.end) - 1)}
             for s in symbols}
    write_stream(pg, w, exchange, truth, 12)
    own_state(exchange, w.start)
    run = cryptopipe(sim_rest, "reconcile", "--exchange", exchange, "--max-minutes", "12", "--json",
                     SYMBOLS=",".join(symbols))
    assert run.returncode == 0, run.stderr
    (out,) = json.loads(run.stdout)
    assert out["status"] == "done" and out["symbols"] == 2 and out["end"] == w.end.isoformat()
    assert out["summary"]["stream_compared"] == sum(1 for s in symbols for c in truth[s].values()
                                                    if Decimal(c["volume"]) > 0)
    assert_matches_truth(pg, sim_rest.control, exchange, symbols, w.start, w.end, source="rest")
    status = cryptopipe(sim_rest, "reconcile", "--status")
    assert status.returncode == 0 and status.stdout.startswith("reconciliation: on;"), status.stdout
    assert f"{exchange}: reconciled until " in status.stdout
    off = cryptopipe(sim_rest, "reconcile", RECONCILE="off")
    assert off.returncode == 0 and "reconciliation is off (RECONCILE=off)" in off.stdout
