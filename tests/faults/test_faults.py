"""Fault injection on the real stack fed by the simulator: one scenario per fault, each asserting
the same invariants afterwards (tests/plugins/pipeline.py) and printing its figures.

Every scenario that checks candles runs gap detection and backfill, then reconciliation, and
holds EVERY minute of its window, for every trading symbol of both exchanges, against the
simulator's true candle (OHLC and volume): the stream's candles (built from tickers) are only
provisional.

The S3 server stays down for five minutes while the websocket faults run (drops every 30 s,
stall, token expiry, rotation, malformed frames): those scenarios check ticks as they go; the
last one of the group, once S3 is back, checks that the archive lost nothing and that gap
detection, backfill and reconciliation (which keep their REST responses in S3) leave every
minute of the group's window with the true candle.

Two scenarios are about candles alone: the stack starting (the first detection runs before the
first session) and a 40 s exchange outage with reconciliation on.
"""
import time
from datetime import datetime, timedelta, timezone

import pytest

from common.topics import DLQ_TOPICS, RAW_TOPICS
from backfill.validation import floor_minute
from tests.plugins.pipeline import Figures, _at, now_ms, scenario

pytestmark = pytest.mark.faults

UTC = timezone.utc
S3_OUTAGE_S = 300


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
    h.reconcile(fig, until)
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


# ---------------------------------------------------------------- candles: start-up, outage

def test_exchange_outage_40s_with_reconciliation(live_pipeline, pg, s3, stack):
    """Both exchanges refuse websocket connections for 40 s: the outage's minutes (edges
    included) are found and backfilled, and reconciliation makes every other minute of the
    window the exchange's candle too."""
    h = live_pipeline
    with scenario(h, pg, s3, stack.s3_bucket, "outage_40s_reconciled") as fig:
        time.sleep(3)
        h.sim.outage(40)
        time.sleep(40)
        h.wait_streaming(pg)
        time.sleep(5)
        fig.add(outage_s=40)


def test_start_up_every_minute_since_start_is_the_exchanges(live_pipeline, pg, s3, stack):
    """A fresh start: the streaming daemons stop, the stored history is emptied, and the first
    gap detection runs before the extractors' first sessions (as on a fresh `make up`, where the
    scheduler may run before the extractors connect). The daemons start; then detection,
    backfill and reconciliation: every minute from before the first detection to the end,
    the minute before the stream began and the partly seen first minute included, for every
    trading symbol of both exchanges, is the simulator's true candle."""
    from cryptopipe.stack import supervisor
    from tests.plugins.stack import truncate_pipeline_tables

    h = live_pipeline
    fig = Figures("start_up")
    # extractors first, and everything they sent loaded, so that no event of the old sessions
    # reaches the emptied tables after the restart
    for program in ("extract-binance", "extract-kucoin"):
        h.stop(program)
    h.settle(archive=True, timeout=300)
    for program in supervisor.PIPELINE_PROGRAMS:
        h.stop(program)
    truncate_pipeline_tables(pg)
    t0 = now_ms()
    first = h.fill_gaps(fig)                    # before any session: the lookback is uncovered
    assert first and {g.kind for g in first} == {"uncovered"}, [g.to_dict() for g in first]
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM stream_sessions")
        assert cur.fetchone() == (0,), "a session began before the first detection"
    for program in supervisor.PIPELINE_PROGRAMS:
        h.start(program)
    h.wait_streaming(pg)
    time.sleep(60)                              # a couple of whole streamed minutes
    t1 = now_ms()
    h.settle()
    with pg.cursor() as cur:
        cur.execute("SELECT min(connected_at) FROM stream_sessions")
        began = cur.fetchone()[0]
    since = int((floor_minute(_at(t0)) - timedelta(minutes=3)).timestamp() * 1000)
    h.fill_gaps(fig, since, t1)
    h.reconcile(fig, t1)
    h.check_candles(pg, since, t1, fig)
    fig.add(first_detection_to_first_session_s=round((began - _at(t0)).total_seconds(), 1),
            gaps_before_stream=len(first))
    fig.print()
    assert h.all_running() == {}
