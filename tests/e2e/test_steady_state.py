"""The whole pipeline on the real stack, no faults: simulator -> extractors -> Kafka ->
transformer -> loader -> Postgres, and archiver -> S3. Nothing lost, nothing doubled; after
reconciliation every minute of the window is the exchange's own candle."""
import time

import pytest

from common.topics import RAW_TOPICS
from tests.plugins.pipeline import Figures, now_ms

pytestmark = pytest.mark.e2e


def test_every_tick_once_and_every_raw_record_archived_once(live_pipeline, pg, s3, stack):
    h = live_pipeline
    raw_start = h.end_offsets(RAW_TOPICS)
    t0 = now_ms()
    time.sleep(25)
    t1 = now_ms()
    raw_end = h.end_offsets(RAW_TOPICS)
    h.settle(archive=True, timeout=180)
    fig = Figures("steady_state")
    h.check_ticks(pg, t0, t1, fig)
    h.check_archive(s3, stack.s3_bucket, raw_start, raw_end, fig)
    h.fill_gaps(fig, t0, t1)
    h.reconcile(fig, t1)
    h.check_candles(pg, t0, t1, fig)
    fig.print()
    assert h.all_running() == {}


def test_latest_prices_are_the_newest_stored_ticks(live_pipeline, pg):
    live_pipeline.settle()
    with pg.cursor() as cur:
        cur.execute("""SELECT l.exchange, l.symbol, l.price, t.price
                         FROM latest_prices l
                         JOIN LATERAL (SELECT price FROM ticks t WHERE t.exchange = l.exchange AND t.symbol = l.symbol
                                        ORDER BY event_time DESC, sequence DESC LIMIT 1) t ON true""")
        rows = cur.fetchall()
    assert len(rows) >= 2 * 5
    bad = [r for r in rows if r[2] != r[3]]
    assert not bad, f"latest_prices disagree with the newest ticks: {bad[:5]}"
