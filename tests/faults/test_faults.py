"""Fault injection on the real stack fed by the simulator: one scenario per fault, each asserting
the same invariants afterwards (tests/plugins/pipeline.py) and printing its figures.

The S3 server stays down for five minutes while the websocket faults run (drops every 30 s,
stall, token expiry, rotation, malformed frames): those scenarios check ticks as they go; the
last one of the group, once S3 is back, checks that the archive lost nothing and that gap
detection and backfill (which keep their REST responses in S3) leave every minute of the
group's window with the true candle.
"""
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest

from common.topics import DLQ_TOPICS, RAW_TOPICS
from tests.plugins.pipeline import Figures, now_ms

pytestmark = pytest.mark.faults

UTC = timezone.utc
S3_OUTAGE_S = 300


@contextmanager
def scenario(h, pg, s3, bucket, name, *, archive=True, candles=True, stopped=()):
    h.wait_streaming(pg)
    raw_start = h.end_offsets(RAW_TOPICS)
    t0 = now_ms()
    fig = Figures(name)
    yield fig
    t1 = now_ms()
    raw_end = h.end_offsets(RAW_TOPICS)
    h.settle(archive=archive, timeout=300)
    h.check_ticks(pg, t0, t1, fig)
    if archive:
        h.check_archive(s3, bucket, raw_start, raw_end, fig)
    if candles:
        h.fill_gaps(fig, t0, t1)
        h.check_candles(pg, t0, t1, fig)
    fig.print()
    assert h.all_running(except_=stopped) == {}, "a process was left dead"


# ---------------------------------------------------------------- S3 down for five minutes

@pytest.fixture(scope="module")
def s3_outage(live_pipeline):
    h = live_pipeline
    h.settle(archive=True, timeout=300)
    state = {"raw_start": h.end_offsets(RAW_TOPICS), "since": time.monotonic(), "t0": now_ms()}
    h.stop("s3proxy")
    yield state
    if h.info("s3proxy")["statename"] != "RUNNING":
        h.start("s3proxy")


def test_websocket_dropped_every_30s(live_pipeline, s3_outage, pg, s3, stack):
    h = live_pipeline
    with scenario(h, pg, s3, stack.s3_bucket, "ws_dropped_every_30s", archive=False, candles=False, stopped=("s3proxy",)) as fig:
        for _ in range(5):
            time.sleep(30)
            h.sim.drop()
        time.sleep(10)
        fig.add(drops=5)


def test_silent_stall(live_pipeline, s3_outage, pg, s3, stack):
    h = live_pipeline
    with scenario(h, pg, s3, stack.s3_bucket, "silent_stall_30s", archive=False, candles=False, stopped=("s3proxy",)):
        time.sleep(3)
        h.sim.stall(30)          # sockets stay open, nothing is sent, no pongs
        time.sleep(30 + 15)
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM stream_sessions WHERE reason ILIKE %s AND disconnected_at > now() - interval '2 minutes'",
                    ("%stall%",))
        assert cur.fetchone()[0] >= 1, "the extractors did not report the stall"


def test_kucoin_token_expiry(live_pipeline, s3_outage, pg, s3, stack):
    h = live_pipeline
    with scenario(h, pg, s3, stack.s3_bucket, "kucoin_token_expiry", archive=False, candles=False, stopped=("s3proxy",)):
        time.sleep(3)
        h.sim.expire_tokens()
        time.sleep(15)
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM stream_sessions WHERE exchange = 'kucoin' AND reason ILIKE %s",
                    ("%token%",))
        assert cur.fetchone()[0] >= 1


def test_forced_rotation_leaves_no_uncovered_span(live_pipeline, s3_outage, pg, s3, stack):
    """Binance announces a shutdown and keeps sending on the old socket for 2.5 s before closing
    it (the new socket delivers ~0.2 s after the announcement, so the two overlap for over 2 s):
    every tick sent only on the old socket is read, and neither socket's end leaves a gap."""
    from backfill import gaps

    h = live_pipeline
    with scenario(h, pg, s3, stack.s3_bucket, "binance_server_shutdown_rotation", archive=False, candles=False, stopped=("s3proxy",)) as fig:
        t0 = datetime.now(UTC)
        time.sleep(3)
        h.sim.server_shutdown(grace_s=2.5)   # the extractor opens the new connection before the old one closes
        time.sleep(15)
    uncovered = [g for g in gaps.list_gaps(exchange="binance", limit=1000)
                 if g.kind and "uncovered" in g.kind and g.gap_end > t0 - timedelta(minutes=1)]
    fig.add(binance_uncovered_gaps=len(uncovered))
    assert not uncovered, [g.to_dict() for g in uncovered]


def test_one_percent_malformed_frames_go_to_the_dlq(live_pipeline, s3_outage, pg, s3, stack):
    h = live_pipeline
    dlq_before = h.end_offsets(DLQ_TOPICS)
    with scenario(h, pg, s3, stack.s3_bucket, "malformed_1pct", archive=False, candles=False, stopped=("s3proxy",)) as fig:
        h.sim.corrupt(ratio=0.01, seconds=30)
        time.sleep(35)
    dlq_after = h.end_offsets(DLQ_TOPICS)
    added = sum(dlq_after[k] - dlq_before.get(k, 0) for k in dlq_after)
    fig.add(dlq_records=added)
    assert added > 0, "malformed frames did not reach the DLQ"


def test_s3_down_five_minutes_loses_nothing(live_pipeline, s3_outage, pg, s3, stack):
    h = live_pipeline
    remaining = S3_OUTAGE_S - (time.monotonic() - s3_outage["since"])
    if remaining > 0:
        time.sleep(remaining)
    raw_end = h.end_offsets(RAW_TOPICS)
    fig = Figures("s3_down_5min")
    fig.add(s3_down_s=round(time.monotonic() - s3_outage["since"]))
    h.start("s3proxy")
    h.settle(archive=True, timeout=300)
    h.check_archive(s3, stack.s3_bucket, s3_outage["raw_start"], raw_end, fig)
    # backfills keep the REST responses they used in S3, so the gaps the websocket faults of this
    # group left (drops, stall, token expiry) are filled now that S3 is back: every minute of the
    # whole group's window must then hold the true candle
    until = now_ms()
    h.fill_gaps(fig, s3_outage["t0"], until)
    h.check_candles(pg, s3_outage["t0"], until, fig)
    fig.print()
    assert h.all_running() == {}


# ---------------------------------------------------------------- daemons and services

def test_kill9_each_daemon(live_pipeline, pg, s3, stack):
    h = live_pipeline
    with scenario(h, pg, s3, stack.s3_bucket, "kill9_each_daemon") as fig:
        killed = []
        for program in ("transform", "load", "archive", "extract-binance", "extract-kucoin"):
            time.sleep(4)
            killed.append(h.kill9(program))
        time.sleep(10)
        fig.add(killed=len(killed))


def test_kafka_broker_stopped_and_restarted(live_pipeline, pg, s3, stack):
    h = live_pipeline
    with scenario(h, pg, s3, stack.s3_bucket, "kafka_down_30s") as fig:
        time.sleep(3)
        h.stop("kafka")
        time.sleep(30)
        h.start("kafka")
        time.sleep(20)
        fig.add(kafka_down_s=30)


class FreshConnections:
    """Hands out cursors on a new connection each time: the fixture's connection dies with the
    server this scenario restarts."""

    def cursor(self):
        from common.db import connect

        conn = connect()
        conn.autocommit = True
        return conn.cursor()


def test_postgres_restarted(live_pipeline, s3, stack):
    h = live_pipeline
    pg = FreshConnections()
    with scenario(h, pg, s3, stack.s3_bucket, "postgres_down_15s") as fig:
        time.sleep(3)
        h.stop("postgres")
        time.sleep(15)
        h.start("postgres")
        time.sleep(15)
        fig.add(postgres_down_s=15)
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM ticks WHERE received_at > now() - interval '1 minute'")
        assert cur.fetchone()[0] > 0, "no tick stored after Postgres came back"


def test_backfill_under_429_418_storm(live_pipeline, pg):
    """A REST backfill of every trading symbol of each exchange while the simulator answers 429
    for 8 s, then a Binance backfill through three 418s: every run finishes without a failed
    chunk, waits as told instead of hammering (no 418 beyond the three injected), and every
    minute of the window holds the simulator's true candle (REST replaces the stream's candles)."""
    from backfill.engine import run_backfill
    from backfill.ratelimit import budget_for
    from backfill.validation import validate_request

    h = live_pipeline
    fig = Figures("backfill_429_418_storm")
    end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    start = end - timedelta(minutes=20)
    seen_before = {ex: (budget_for(ex).stats.rate_limited, budget_for(ex).stats.banned)
                   for ex in ("binance", "kucoin")}
    summaries = []
    for exchange in ("binance", "kucoin"):
        symbols = sorted(h.trading_symbols(exchange))
        req = validate_request(exchange, symbols, start, end)      # markets loaded before the storm
        h.sim.rest_errors(429, seconds=8, exchange=exchange)
        summaries.append(run_backfill(req, workers=4, force=True))
    h.sim.rest_errors(418, count=3, exchange="binance")
    last = end - timedelta(minutes=5)
    summaries.append(run_backfill(validate_request("binance", sorted(h.trading_symbols("binance")), last, end),
                                  workers=4, force=True))
    for s in summaries:
        assert s.ok, s.to_dict()
        assert s.chunks_failed == 0 and s.chunks_done == s.chunks_total > 0, s.to_dict()
    rate_limited = sum(budget_for(ex).stats.rate_limited - seen_before[ex][0] for ex in seen_before)
    banned = sum(budget_for(ex).stats.banned - seen_before[ex][1] for ex in seen_before)
    waits = sum(s.rate_limit_waits for s in summaries)
    fig.add(chunks=sum(s.chunks_total for s in summaries), chunks_failed=sum(s.chunks_failed for s in summaries),
            requests=sum(s.requests for s in summaries), answers_429=rate_limited, answers_418=banned,
            rate_limit_waits=waits, rows_written=sum(s.rows_written for s in summaries))
    assert rate_limited > 0 and waits > 0, "the storm never reached the backfill"
    assert 1 <= banned <= 3, f"{banned} answers 418 for 3 injected: the backfill kept calling after a 418"
    with pg.cursor() as cur:
        cur.execute("""SELECT count(*) - count(DISTINCT (exchange, symbol, open_time)) FROM candles_1m
                        WHERE open_time >= %s AND open_time < %s""", (start, end))
        fig.add(duplicates=cur.fetchone()[0])
    assert fig.values["duplicates"] == 0
    h.check_candles(pg, int(start.timestamp() * 1000), int(end.timestamp() * 1000), fig, truth_everywhere=True)
    fig.print()
