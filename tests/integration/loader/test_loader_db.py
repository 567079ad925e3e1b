"""Loader writes on the real Postgres: idempotent ticks, incremental candles across batches in any
order, 'rest' candles untouched, latest prices only forward, sessions from events in any order."""
import random
import uuid
from decimal import Decimal

import pytest

from common.models import PipelineEvent, Tick
from common.codec.ticks import tick_line
from streaming.loader import Batch, TickWriter, merge_events

pytestmark = pytest.mark.integration

MIN0 = 1_764_000_000_000 - 1_764_000_000_000 % 60_000      # a minute start (ms)


def sym():
    return f"L{uuid.uuid4().hex[:8].upper()}-USDT"


def batch_of(ticks=(), sessions=None, extra_lines=()):
    lines = [tick_line(t) for t in ticks] + list(extra_lines)
    return Batch(lines=lines, days={t.event_time_ms // 86_400_000 for t in ticks}, sessions=sessions or {})


@pytest.fixture
def writer(stack):
    w = TickWriter()
    yield w
    w.close()


def rows(pg, sql, *args):
    with pg.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def test_replayed_ticks_add_no_row_and_no_candle_volume(pg, writer):
    s = sym()
    ticks = [Tick("binance", s, MIN0 + i * 100, Decimal(f"{100 + i}.5"), (MIN0 + i * 100) * 10**6 + 7, sequence=i)
             for i in range(50)]
    first = writer.write(batch_of(ticks))
    again = writer.write(batch_of(ticks, extra_lines=[tick_line(t) for t in ticks[:10]]))  # a replay + in-batch dups
    assert (first.slow_path, again.slow_path) == (False, True)      # the primary key caught the replay
    assert (first.ticks_inserted, again.ticks_inserted) == (50, 0)
    assert rows(pg, "SELECT count(*) FROM ticks WHERE symbol = %s", s) == [(50,)]
    assert rows(pg, "SELECT tick_count, open, close FROM candles_1m WHERE symbol = %s", s) == \
        [(50, Decimal("100.5"), Decimal("149.5"))]
    # exact decimals and times, field by field
    (price, event_time, received_at, seq), = rows(
        pg, "SELECT price, event_time, received_at, sequence FROM ticks WHERE symbol = %s AND sequence = 3", s)
    assert price == Decimal("103.5") and seq == 3
    assert int(event_time.timestamp() * 1000) == MIN0 + 300
    assert received_at == ticks[3].received_at


def test_candles_merge_correctly_across_shuffled_batches(pg, writer):
    s = sym()
    rng = random.Random(7)
    ticks = []
    for i in range(300):          # 3 minutes, several ticks per ms, sequence breaks ties
        ms = MIN0 + rng.randrange(0, 180_000)
        ticks.append(Tick("kucoin", s, ms, Decimal(rng.randrange(1, 10**6)) / 1000, ms * 10**6, sequence=i))
    shuffled = ticks[:]
    rng.shuffle(shuffled)
    for k in range(0, 300, 37):
        writer.write(batch_of(shuffled[k:k + 37]))
    got = rows(pg, "SELECT open_time, open, high, low, close, tick_count, source FROM candles_1m "
                   "WHERE exchange = 'kucoin' AND symbol = %s ORDER BY open_time", s)
    expected = []
    for m in range(3):
        in_min = sorted((t for t in ticks if (t.event_time_ms - MIN0) // 60_000 == m),
                        key=lambda t: (t.event_time_ms, t.sequence))
        expected.append((in_min[0].price, max(t.price for t in in_min), min(t.price for t in in_min),
                         in_min[-1].price, len(in_min), "stream"))
    assert [g[1:] for g in got] == expected
    newest = max(ticks, key=lambda t: (t.event_time_ms, t.sequence))
    assert rows(pg, "SELECT price FROM latest_prices WHERE exchange = 'kucoin' AND symbol = %s", s) == \
        [(newest.price,)]


def test_rest_candles_are_never_overwritten_and_latest_price_only_moves_forward(pg, writer):
    s = sym()
    with pg.cursor() as cur:
        cur.execute("INSERT INTO candles_1m (exchange, symbol, open_time, open, high, low, close, volume, source) "
                    "VALUES ('binance', %s, to_timestamp(%s / 1000.0), 1, 2, 1, 2, 5, 'rest')", (s, MIN0))
    new = Tick("binance", s, MIN0 + 1000, Decimal("50"), (MIN0 + 1000) * 10**6)
    old = Tick("binance", s, MIN0 + 500, Decimal("40"), (MIN0 + 500) * 10**6)
    writer.write(batch_of([new]))
    writer.write(batch_of([old]))
    assert rows(pg, "SELECT open, high, close, volume, source FROM candles_1m WHERE symbol = %s", s) == \
        [(Decimal(1), Decimal(2), Decimal(2), Decimal(5), "rest")]
    assert rows(pg, "SELECT price FROM latest_prices WHERE symbol = %s", s) == [(Decimal("50"),)]
    assert rows(pg, "SELECT count(*) FROM ticks WHERE symbol = %s", s) == [(2,)]


def test_sessions_are_idempotent_and_order_independent(pg, writer):
    cid = "conn-" + uuid.uuid4().hex
    ns = MIN0 * 10**6
    evs = [PipelineEvent("binance", cid, "connected", ns + 1_000),
           PipelineEvent("binance", cid, "subscribed", ns + 2_000),
           PipelineEvent("binance", cid, "heartbeat", ns + 9_000),
           PipelineEvent("binance", cid, "disconnected", ns + 10_000, reason="server closed")]
    writer.write(batch_of(sessions=merge_events([evs[2]])))           # heartbeat first (out of order)
    writer.write(batch_of(sessions=merge_events([evs[3]])))
    writer.write(batch_of(sessions=merge_events(evs[:2])))
    writer.write(batch_of(sessions=merge_events(evs)))                 # full replay
    (conn, sub, last, disc, reason), = rows(
        pg, "SELECT connected_at, subscribed_at, last_seen_at, disconnected_at, reason FROM stream_sessions "
            "WHERE conn_id = %s", cid)
    to_us = lambda d: int(d.timestamp() * 1_000_000)  # noqa: E731
    assert [to_us(x) for x in (conn, sub, last, disc)] == [(ns + k) // 1000 for k in (1_000, 2_000, 10_000, 10_000)]
    assert reason == "server closed"


def test_a_sharded_connection_stores_its_symbols(pg, writer):
    cid = "conn-" + uuid.uuid4().hex
    ns = MIN0 * 10**6
    writer.write(batch_of(sessions=merge_events([PipelineEvent("kucoin", cid, "heartbeat", ns + 5_000)])))
    writer.write(batch_of(sessions=merge_events([PipelineEvent("kucoin", cid, "connected", ns,
                                                               detail={"symbols": ["AAA-USDT", "BBB-USDT"]})])))
    writer.write(batch_of(sessions=merge_events([PipelineEvent("kucoin", cid, "disconnected", ns + 9_000, reason="x")])))
    assert rows(pg, "SELECT symbols FROM stream_sessions WHERE conn_id = %s", cid) == [(["AAA-USDT", "BBB-USDT"],)]
    other = "conn-" + uuid.uuid4().hex
    writer.write(batch_of(sessions=merge_events([PipelineEvent("kucoin", other, "connected", ns)])))
    assert rows(pg, "SELECT symbols FROM stream_sessions WHERE conn_id = %s", other) == [(None,)]


def test_ticks_are_stored_in_daily_partitions_with_retention(pg, writer):
    s = sym()
    day_ms = 86_400_000
    far = (MIN0 // day_ms - 4000) * day_ms   # 2014: older than any sample data others may load
    writer.write(batch_of([Tick("binance", s, far + 5, Decimal("1"), (far + 5) * 10**6)]))
    part = rows(pg, "SELECT tableoid::regclass::text FROM ticks WHERE symbol = %s", s)[0][0]
    from datetime import datetime, timezone
    assert part == "ticks_" + datetime.fromtimestamp(far / 1000, timezone.utc).strftime("%Y%m%d")
    assert writer.drop_expired_partitions(3995) >= 1
    assert rows(pg, "SELECT count(*) FROM ticks WHERE symbol = %s", s) == [(0,)]
    # the loader recreates a dropped partition when a tick of that day arrives again
    writer.write(batch_of([Tick("binance", s, far + 6, Decimal("1"), (far + 6) * 10**6)]))
    assert rows(pg, "SELECT count(*) FROM ticks WHERE symbol = %s", s) == [(1,)]


class Msg:
    def __init__(self, topic, partition, offset):
        self._t, self._p, self._o = topic, partition, offset

    def topic(self): return self._t
    def partition(self): return self._p
    def offset(self): return self._o


def test_offsets_are_written_with_the_rows_and_a_replayed_batch_is_refused_whole(pg, writer):
    """Exactly-once without per-row merges: the offsets a batch covers commit with its rows; a batch
    whose offsets are already stored (a replay, a zombie after a rebalance) changes nothing."""
    from streaming.loader import Offsets, Replayed

    group, topic = "g-" + uuid.uuid4().hex, "binance_transformed_data-t" + uuid.uuid4().hex[:6]
    s = sym()
    ticks = [Tick("binance", s, MIN0 + i, Decimal("2"), (MIN0 + i) * 10**6, sequence=i) for i in range(20)]
    first = Offsets.of(group, [Msg(topic, 0, o) for o in (5, 6)] + [Msg(topic, 2, 9)])
    writer.write(batch_of(ticks[:10]), first)
    assert writer.stored_offsets(group, [(topic, 0), (topic, 1), (topic, 2)]) == {(topic, 0): 7, (topic, 2): 10}
    with pytest.raises(Replayed):                     # offsets 6..7 of partition 0 again: refused
        writer.write(batch_of(ticks[10:]), Offsets.of(group, [Msg(topic, 0, 6), Msg(topic, 0, 7)]))
    assert rows(pg, "SELECT count(*) FROM ticks WHERE symbol = %s", s) == [(10,)]     # nothing of it stored
    # the next batch (offsets past commit markers may skip a few) goes through
    writer.write(batch_of(ticks[10:]), Offsets.of(group, [Msg(topic, 0, 9), Msg(topic, 0, 10)]))
    assert writer.stored_offsets(group, [(topic, 0)]) == {(topic, 0): 11}
    assert rows(pg, "SELECT count(*), sum(tick_count) FROM ticks t JOIN candles_1m c USING (exchange, symbol) "
                    "WHERE t.symbol = %s AND c.open_time = date_trunc('minute', t.event_time)", s) == [(20, 400)]
