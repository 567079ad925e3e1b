"""The divergence of a stream candle from the exchange's: exact Decimal math and what a chunk
counts (backfill.checks)."""
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

from backfill.checks import MinuteCheck, minute_checks, relative_difference
from backfill.rest import MinuteCandle

UTC = timezone.utc
T = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
M = timedelta(minutes=1)


def rest(t, o, h, l, c, v):
    return MinuteCandle(t, D(o), D(h), D(l), D(c), D(v), confirmed_empty=D(v) == 0)


def empty(t):
    return MinuteCandle(t, None, None, None, None, None, confirmed_empty=True)


def test_relative_difference_is_exact():
    assert relative_difference(D("100.3"), D("100")) == D("0.003")
    assert relative_difference(D("99.7"), D("100")) == D("0.003")
    assert relative_difference(D("0.1"), D("0.3")) == D("2") / D("3")          # no float rounding on the way
    assert relative_difference(D("1.50"), D("1.5")) == 0
    assert relative_difference(None, D("2")) is None and relative_difference(D("2"), None) is None
    assert relative_difference(D("0"), D("0")) == 0 and relative_difference(D("5"), D("0")) is None


def test_a_minute_sums_symbols_and_keeps_the_largest_difference_of_each_field():
    c = MinuteCheck(T)
    c.add((D("100"), D("101"), D("99"), D("100.5"), None), rest(T, "100", "101", "99", "100.5", "7"))   # same
    c.add((D("200.2"), D("201"), D("199"), D("200"), None), rest(T, "200", "202", "198", "200.4", "3"))
    c.add((D("10"), D("10"), D("10"), D("10.1"), None), rest(T, "10", "10", "10", "10", "1"))
    assert (c.compared, c.differing, c.missing) == (3, 2, 0)
    assert c.max_rel == {"open": D("0.001"), "high": D("1") / D("202"), "low": D("1") / D("198"),
                         "close": D("0.01"), "volume": None}       # stream candles carry no volume


def test_volume_counts_when_the_stream_candle_has_one():
    c = MinuteCheck(T)
    c.add((D("1"), D("1"), D("1"), D("1"), D("4")), rest(T, "1", "1", "1", "1", "5"))
    assert c.differing == 1 and c.max_rel["volume"] == D("0.2") and c.max_rel["close"] == 0


def test_a_stream_candle_in_a_minute_without_a_trade_differs_without_a_ratio():
    c = MinuteCheck(T)
    c.add((D("1"), D("1"), D("1"), D("1"), None), empty(T))
    assert (c.compared, c.differing, c.max_rel["close"]) == (1, 1, None)


def test_a_chunk_checks_stream_candles_and_missed_trades_never_rest_rows_or_minutes_before_the_stream():
    stored = {T: (D("1"), D("1"), D("1"), D("1"), None, "stream"),          # compared, equal
              T + M: (D("2"), D("2"), D("2"), D("2.2"), None, "stream"),    # compared, differs
              T + 2 * M: (D("9"), D("9"), D("9"), D("9"), D("9"), "rest")}  # already final: not again
    candles = [rest(T, "1", "1", "1", "1", "3"), rest(T + M, "2", "2", "2", "2", "1"),
               rest(T + 2 * M, "3", "3", "3", "3", "1"),
               rest(T + 3 * M, "4", "4", "4", "4", "2"),                    # traded, no stream candle: missed
               empty(T + 4 * M),                                            # no trade, nothing stored: agreed
               rest(T - M, "5", "5", "5", "5", "1")]                        # before the stream began
    got = minute_checks(stored, candles, stream_since=T)
    assert [(c.minute, c.compared, c.differing, c.missing) for c in got] == \
        [(T, 1, 0, 0), (T + M, 1, 1, 0), (T + 3 * M, 0, 0, 1)]
    assert got[1].max_rel["close"] == D("0.1")
    # an exchange that never streamed: nothing was the stream's to miss
    assert [c.minute for c in minute_checks({}, candles, stream_since=None)] == []
