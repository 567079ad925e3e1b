"""The backfill engine against the simulator's REST API and the real Postgres and S3."""
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from backfill.engine import plan_chunks, run_backfill
from backfill.ratelimit import budget_for
from backfill.validation import validate_request
from common.s3 import backfill_response_key
from tests.integration.backfill.conftest import (assert_matches_truth, pick_symbols, read_archive,
                                                 stored_candles)

pytestmark = pytest.mark.integration
UTC = timezone.utc
ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("exchange", ["binance", "kucoin"])
def test_backfill_stores_true_candles_replaces_stream_and_archives(exchange, sim_rest, window, pg, s3, stack):
    ctl = sim_rest.control
    w = window(90)
    symbols = w.use(exchange, pick_symbols(ctl, exchange))
    # a stream candle that saw only part of its minute: the REST candle must replace it
    bogus_minute = w.start + timedelta(minutes=7)
    with pg.cursor() as cur:
        cur.execute("INSERT INTO candles_1m (exchange, symbol, open_time, open, high, low, close, source, tick_count) "
                    "VALUES (%s, %s, %s, 1, 1, 1, 1, 'stream', 1)", (exchange, symbols[0], bogus_minute))

    request = validate_request(exchange, symbols, w.start, w.end)
    summary = run_backfill(request, workers=3)
    assert summary.ok and summary.chunks_failed == 0 and summary.chunks_partial == 0
    assert summary.chunks_done == len(plan_chunks(request))
    empty = assert_matches_truth(pg, ctl, exchange, symbols, w.start, w.end)
    assert summary.empty_minutes == empty
    if exchange == "kucoin":
        assert empty > 0          # the illiquid symbol had minutes without a trade: recorded, not gaps

    # the REST responses used are kept in S3, one object per chunk
    chunk = plan_chunks(request)[0]
    doc = read_archive(s3, stack.s3_bucket, backfill_response_key(exchange, chunk.symbol, "1m", chunk.start, chunk.end))
    assert doc["symbol"] == chunk.symbol and doc["responses"] and doc["responses"][0]["status"] == 200

    # a re-run skips every finished chunk and writes nothing; a forced one rewrites nothing either
    again = run_backfill(request)
    assert again.chunks_skipped == again.chunks_total and again.rows_written == 0 and again.requests == 0
    forced = run_backfill(request, force=True)
    assert forced.ok and forced.chunks_done == forced.chunks_total and forced.rows_written == 0
    assert_matches_truth(pg, ctl, exchange, symbols, w.start, w.end)


@pytest.mark.parametrize("exchange", ["binance", "kucoin"])
def test_backfill_under_429_and_418_storm_finishes_without_ban_or_lost_chunk(exchange, sim_rest, window, pg):
    ctl = sim_rest.control
    w = window(60 * 40)                       # 40 h: several chunks per symbol
    *symbols, other = pick_symbols(ctl, exchange, 4, 0)
    w.use(exchange, symbols)
    request = validate_request(exchange, symbols, w.start, w.end)
    from backfill.rest import known_symbols
    known_symbols(exchange)                   # markets loaded before the storm starts
    ctl.rest_errors(status=429, seconds=3, exchange=exchange)
    summary = run_backfill(request, workers=4)
    assert summary.ok and summary.chunks_done == summary.chunks_total > 4
    assert summary.rate_limit_waits > 0
    stats = budget_for(exchange).stats
    assert stats.rate_limited > 0 and stats.banned == 0
    assert_matches_truth(pg, ctl, exchange, symbols, w.start, w.end)

    # a short ban (418 with Retry-After) is waited out too
    w2 = window(30)
    symbols2 = w2.use(exchange, [other])     # not fetched yet anywhere
    ctl.rest_errors(status=418, count=2, exchange=exchange)
    summary = run_backfill(validate_request(exchange, symbols2, w2.start, w2.end))
    assert summary.ok and summary.rate_limit_waits >= 1
    assert_matches_truth(pg, ctl, exchange, symbols2, w2.start, w2.end)


def test_backfill_killed_half_way_and_rerun_completes_without_duplicates(sim_rest, window, pg):
    exchange = "binance"
    ctl = sim_rest.control
    w = window(60 * 24 * 4)                   # 4 days x 2 symbols: ~12 chunks of 1000 minutes
    symbols = w.use(exchange, pick_symbols(ctl, exchange, 2, 0))
    request = validate_request(exchange, symbols, w.start, w.end)
    total = len(plan_chunks(request))
    ctl.slow_rest(delay_s=0.4, seconds=120, exchange=exchange)
    code = ("import sys; from backfill.validation import BackfillRequest; from backfill.engine import run_backfill; "
            "import json; run_backfill(BackfillRequest.from_dict(json.loads(sys.argv[1])), workers=1)")
    import json
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(request.to_dict())], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        done = 0
        for _ in range(600):                  # until a few chunks are done (bounded, not timed)
            with pg.cursor() as cur:
                cur.execute("SELECT count(*) FROM backfill_chunks WHERE exchange = %s AND symbol = ANY(%s) "
                            "AND status = 'done' AND chunk_start >= %s AND chunk_end <= %s",
                            (exchange, symbols, w.start, w.end))
                done = cur.fetchone()[0]
            if done >= 3 or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 3 <= done < total
    ctl.clear_faults()
    summary = run_backfill(request, workers=3)
    assert summary.ok
    assert summary.chunks_skipped >= done and summary.chunks_done + summary.chunks_skipped == total
    with pg.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT (symbol, open_time)) FROM candles_1m WHERE exchange = %s "
                    "AND symbol = ANY(%s) AND open_time >= %s AND open_time < %s",
                    (exchange, symbols, w.start, w.end))
        rows, distinct = cur.fetchone()
    assert rows == distinct == request.minutes * len(symbols)
    assert_matches_truth(pg, ctl, exchange, symbols, w.start, w.end)


def test_unknown_symbol_is_rejected_by_the_exchange_markets(sim_rest):
    from backfill.validation import InvalidBackfillRequest
    now = datetime.now(UTC)
    with pytest.raises(InvalidBackfillRequest, match="binance has no active spot market ZZZ-USDT"):
        validate_request("binance", "ZZZ-USDT", now - timedelta(hours=2), now - timedelta(hours=1))


def test_chunk_is_not_done_until_its_responses_are_in_s3(sim_rest, window, pg, monkeypatch):
    import socket

    from tests.integration.backfill.conftest import reset_backfill_state

    exchange = "kucoin"
    w = window(20)
    symbols = w.use(exchange, pick_symbols(sim_rest.control, exchange, 1, 0))
    request = validate_request(exchange, symbols, w.start, w.end)
    with socket.socket() as s:                    # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    monkeypatch.setenv("S3_ENDPOINT_URL", f"http://127.0.0.1:{dead}")
    reset_backfill_state()
    summary = run_backfill(request)
    assert not summary.ok and summary.chunks_failed == summary.chunks_total
    assert "could not keep the REST responses in S3" in summary.failures[0]["error"]
    assert stored_candles(pg, exchange, symbols[0], w.start, w.end) == {}
    with pg.cursor() as cur:
        cur.execute("SELECT status, error FROM backfill_chunks WHERE exchange = %s AND symbol = %s "
                    "AND chunk_start = %s", (exchange, symbols[0], w.start))
        status, error = cur.fetchone()
    assert status == "failed" and "S3" in error

    monkeypatch.delenv("S3_ENDPOINT_URL")
    reset_backfill_state()
    again = run_backfill(request)
    assert again.ok and again.chunks_done == again.chunks_total
    assert_matches_truth(pg, sim_rest.control, exchange, symbols, w.start, w.end)


def test_backfill_up_to_now_waits_for_the_last_minute_instead_of_ending_partial(sim_rest, window, pg):
    from sim.market import build_universe

    exchange = "kucoin"
    # not a symbol of the e2e or DAG tests' markets, which stream at this very moment
    busy = {s.canonical for seed, n in ((7, 12), (1, 5), (1, 200)) for s in build_universe(seed, n)}
    listed = [s for s in sim_rest.control.symbols(exchange) if s["status"] == "TRADING" and s["symbol"] not in busy]
    symbol = sorted(listed, key=lambda s: s["trades_per_minute"])[0]["symbol"]     # the quietest
    w = window(1)
    now = datetime.now(UTC)
    w.start, w.end = now.replace(second=0, microsecond=0) - timedelta(minutes=6), now
    w.use(exchange, [symbol])
    request = validate_request(exchange, [symbol], w.start, now)
    summary = run_backfill(request)
    assert summary.ok and summary.chunks_partial == 0 and summary.chunks_done == 1
    assert_matches_truth(pg, sim_rest.control, exchange, [symbol], request.start, request.end)
