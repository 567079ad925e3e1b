"""Cross-exchange validation on the real Postgres: runs of diverging closes become
`price_divergences` rows; short runs, confirmed-empty minutes and single-listed pairs do not;
re-runs and overlapping runs add no row."""
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from backfill.cross_check import cross_check

pytestmark = pytest.mark.integration
UTC = timezone.utc
T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def put(cur, exchange, symbol, minute, close, empty=False):
    cur.execute("""INSERT INTO candles_1m (exchange, symbol, open_time, open, high, low, close, volume, source,
                                           confirmed_empty) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,'rest',%s)""",
                (exchange, symbol, T0 + timedelta(minutes=minute), close, close, close, close,
                 Decimal(0) if empty else Decimal(1), empty))


@pytest.fixture
def market(clean_db):
    with clean_db.cursor() as cur:
        for m in range(60):
            put(cur, "binance", "BTC-USDT", m, Decimal("60000"))
            # 10..14: +1 % (100 bps); 30..31: +1 % (too short); 40..45 +1 % but 42 confirmed empty on kucoin
            k = Decimal("60600") if 10 <= m <= 14 or 30 <= m <= 31 or 40 <= m <= 45 else Decimal("60010")
            put(cur, "kucoin", "BTC-USDT", m, k, empty=(m == 42))
            put(cur, "binance", "ETH-USDT", m, Decimal("3000"))
            put(cur, "kucoin", "ETH-USDT", m, Decimal("3000.3"))       # 1 bps: fine
            put(cur, "binance", "ONLY-USDT", m, Decimal("5"))           # listed on one exchange only
    return clean_db


def rows(pg):
    with pg.cursor() as cur:
        cur.execute("""SELECT symbol, exchange_a, exchange_b, window_start, window_end, minutes, max_bps,
                              close_a, close_b FROM price_divergences ORDER BY window_start""")
        return cur.fetchall()


def test_diverging_runs_are_recorded_once(market):
    summary = cross_check(market, T0, T0 + timedelta(hours=1), 50, 3)
    expected = [
        ("BTC-USDT", "binance", "kucoin", T0 + timedelta(minutes=10), T0 + timedelta(minutes=15), 5,
         Decimal("99.50"), Decimal("60000"), Decimal("60600")),
        ("BTC-USDT", "binance", "kucoin", T0 + timedelta(minutes=43), T0 + timedelta(minutes=46), 3,
         Decimal("99.50"), Decimal("60000"), Decimal("60600")),
    ]
    assert rows(market) == expected          # 40-41 is only two minutes long once 42 breaks it
    assert summary["divergences"] == 2 and summary["rows_changed"] == 2
    again = cross_check(market, T0, T0 + timedelta(hours=1), 50, 3)
    assert again["rows_changed"] == 0 and rows(market) == expected


def test_a_window_cut_by_an_earlier_run_is_merged_not_doubled(market):
    cross_check(market, T0, T0 + timedelta(minutes=12), 50, 2)      # sees 10..11 only
    cross_check(market, T0 + timedelta(minutes=11), T0 + timedelta(hours=1), 50, 2)   # sees 11..14
    windows = [(r[3], r[4]) for r in rows(market) if r[3] < T0 + timedelta(minutes=20)]
    assert windows == [(T0 + timedelta(minutes=10), T0 + timedelta(minutes=15))]


def test_threshold_is_a_setting(market):
    cross_check(market, T0, T0 + timedelta(hours=1), 150, 3)
    assert rows(market) == []
