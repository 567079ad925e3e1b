"""Every loss path becomes a gap (issue 14), on the real Postgres: a session's coverage ends where
its extractor's safe data ends (`covered_until`), not where it noticed the socket was gone; the
minutes whose data went to a dead-letter topic (`dlq_records`) are gaps of the symbols they held,
exchange-wide when the dead letter could not name them, and none for markets we do not track."""
import uuid
from datetime import timedelta

import pytest

from backfill.gaps import detect_gaps

pytestmark = pytest.mark.integration
M = timedelta(minutes=1)
S = timedelta(seconds=1)
EX = "binance"


def test_covered_until_and_dead_letters_become_gaps(pg, window):
    w = window(30)
    T = w.start
    symbol = "LOSSA-USDT"
    w.use(EX, [symbol, "LOSSB-USDT"])
    s1, s2 = f"loss-{uuid.uuid4().hex[:12]}", f"loss-{uuid.uuid4().hex[:12]}"
    w.conn_ids += [s1, s2]
    now = T + 20 * M + 30 * S
    dlq_topic = f"binance_dlq-loss-{uuid.uuid4().hex[:8]}"
    with pg.cursor() as cur:
        # s1 noticed the drop at 10:30, but what it read and made safe ends at 9:50
        cur.execute("INSERT INTO stream_sessions (conn_id, exchange, connected_at, subscribed_at, last_seen_at, "
                    "disconnected_at, reason, covered_until) VALUES (%s, %s, %s, %s, %s, %s, 'connection_lost', %s), "
                    "(%s, %s, %s, %s, %s, NULL, NULL, %s)",
                    (s1, EX, T - 5 * M, T - 5 * M, T + 10 * M + 30 * S, T + 10 * M + 30 * S, T + 9 * M + 50 * S,
                     s2, EX, T + 12 * M, T + 12 * M, now - 2 * S, now - 5 * S))
        for day in sorted({(T + i * M).date() for i in range(-6, 22)}):
            cur.execute("SELECT ensure_ticks_partition(%s)", (day,))
        cur.executemany("INSERT INTO ticks (exchange, symbol, event_time, price, received_at) VALUES (%s, %s, %s, 1, %s)",
                        [(EX, "LOSSB-USDT", T + i * M + 30 * S, T + i * M + 30 * S) for i in range(-5, 21)])
        rows = [  # (offset, received_at, symbols, untracked)
            (0, T + 15 * M + 2 * S, [symbol], False),        # a bad element that named its symbol
            (1, T + 18 * M + 30 * S, None, False),           # a malformed frame: whose data? unknown
            (2, T + 13 * M + 30 * S, ["NOTOURS-USDT"], True)]  # a market we do not track
        cur.executemany("INSERT INTO dlq_records (dlq_topic, dlq_partition, dlq_offset, exchange, stage, reason, "
                        "received_at, symbols, untracked) VALUES (%s, 0, %s, %s, 'transform', 'test', %s, %s, %s)",
                        [(dlq_topic, off, EX, at, syms, untracked) for off, at, syms, untracked in rows])
    try:
        found = detect_gaps(now, lookback=timedelta(minutes=25, seconds=30), exchanges=[EX])
        mine = [g for g in found if T - 5 * M <= g.gap_start < w.end]
        wide = sorted((g.gap_start, g.gap_end, g.kind) for g in mine if g.symbol is None)
        assert wide == [(T + 9 * M, T + 12 * M, "uncovered"), (T + 18 * M, T + 19 * M, "dlq")], wide
        per_symbol = sorted((g.symbol, g.gap_start, g.gap_end, g.kind) for g in mine if g.symbol is not None)
        # received 15:02 -> its ticks' exchange times may reach back to 14:57: minutes 14 and 15
        assert per_symbol == [(symbol, T + 14 * M, T + 16 * M, "dlq")], per_symbol
        # detecting again records nothing new
        again = [g for g in detect_gaps(now, lookback=timedelta(minutes=25, seconds=30), exchanges=[EX])
                 if T - 5 * M <= g.gap_start < w.end]
        assert again == []
    finally:
        with pg.cursor() as cur:
            cur.execute("DELETE FROM dlq_records WHERE dlq_topic = %s", (dlq_topic,))
