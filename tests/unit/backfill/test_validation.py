from datetime import datetime, timedelta, timezone

import pytest

from backfill.validation import InvalidBackfillRequest, normalize_symbol, validate_request

UTC = timezone.utc
NOW = datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC)
KNOWN = {"BTC-USDT", "ETH-USDT", "ETH-BTC"}
HOUR = timedelta(hours=1)


def check(*args, **kw):
    kw.setdefault("now", NOW)
    kw.setdefault("known_symbols", KNOWN)
    kw.setdefault("max_window", timedelta(hours=24))
    return validate_request(*args, **kw)


def problems(*args, **kw) -> str:
    with pytest.raises(InvalidBackfillRequest) as e:
        check(*args, **kw)
    assert isinstance(e.value, ValueError)
    return str(e.value)


def test_valid_request_is_normalized_to_whole_closed_minutes():
    r = check("Binance", "btc/usdt, ETH-USDT,", "2024-05-01T10:00:45Z", "2024-05-01 12:00:30")
    assert r.exchange == "binance"
    assert r.symbols == ("BTC-USDT", "ETH-USDT")
    assert r.start == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    # end ceiled to 12:01 but clamped to the start of the still-open minute
    assert r.end == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert r.minutes == 120
    assert r.to_dict()["start"] == "2024-05-01T10:00:00+00:00"
    assert type(r).from_dict(r.to_dict()) == r


def test_naive_datetimes_are_utc_and_list_symbols_accepted():
    r = check("kucoin", ["ETH-BTC"], datetime(2024, 5, 1, 9, 59, 10), datetime(2024, 5, 1, 10, 0, 10))
    assert (r.start, r.end) == (datetime(2024, 5, 1, 9, 59, tzinfo=UTC), datetime(2024, 5, 1, 10, 1, tzinfo=UTC))


def test_all_means_every_known_symbol():
    assert check("kucoin", "ALL", NOW - HOUR, NOW).symbols == tuple(sorted(KNOWN))
    assert check("kucoin", ["all"], NOW - HOUR, NOW).symbols == tuple(sorted(KNOWN))


def test_known_symbols_may_be_a_callable_per_exchange():
    seen = []
    r = check("kucoin", "ETH-BTC", NOW - HOUR, NOW, known_symbols=lambda ex: seen.append(ex) or {"ETH-BTC"})
    assert seen == ["kucoin"] and r.symbols == ("ETH-BTC",)


@pytest.mark.parametrize("symbol", ["BTC'-USDT", "BTC-USDT;DROP TABLE gaps", "../etc/passwd", "BTC-USDT\x00",
                                    "BTC-UЅDT", "btc-uſdt", "BTC--USDT", "BTCUSDT", "", "B" * 300, 42])
def test_hostile_symbols_rejected_with_readable_message(symbol):
    msg = problems("binance", [symbol, "BTC-USDT"] if symbol != "" else [symbol], NOW - HOUR, NOW)
    assert "symbol" in msg
    assert msg.isascii()                     # hostile characters are escaped, never echoed raw
    assert "\x00" not in msg and len(msg) < 400


def test_unicode_lookalike_never_normalizes_into_a_valid_symbol():
    # 'ſ'.upper() == 'S': checked before upper-casing
    with pytest.raises(ValueError, match="non-ASCII"):
        normalize_symbol("btc-uſdt")


def test_unknown_symbol_named():
    msg = problems("binance", "BTC-USDT,DOGE-EUR", NOW - HOUR, NOW)
    assert "binance has no active spot market DOGE-EUR" in msg


def test_unknown_exchange():
    assert "exchange 'nyse' is not supported; choose one of binance, kucoin" in problems("nyse", "BTC-USDT", NOW - HOUR, NOW)


def test_end_before_start():
    msg = problems("binance", "BTC-USDT", "2024-05-01T11:00Z", "2024-05-01T10:00Z")
    assert "end (2024-05-01 10:00 UTC) must be after start (2024-05-01 11:00 UTC)" in msg


def test_future_and_absurd_dates():
    assert "is in the future" in problems("binance", "BTC-USDT", NOW - HOUR, NOW + timedelta(days=1),
                                          max_window=timedelta(days=30))
    msg = problems("binance", "BTC-USDT", "1900-01-01", "1900-01-02")
    assert "before 2017-07-01" in msg
    assert "is not a date-time" in problems("binance", "BTC-USDT", "yesterday", NOW)
    assert "is not a date-time" in problems("binance", "BTC-USDT", "2024-13-45T99:99", NOW)
    assert "is not a date-time" in problems("binance", "BTC-USDT", "2024-05-01'; DROP TABLE x", NOW)
    assert "start is missing" in problems("binance", "BTC-USDT", None, NOW)


def test_window_longer_than_maximum():
    msg = problems("binance", "BTC-USDT", NOW - timedelta(hours=30), NOW)
    assert "the window is 30.0 hours long; the maximum is 24 hours" in msg


def test_window_without_a_closed_minute():
    msg = problems("binance", "BTC-USDT", "2024-05-01T12:00:05Z", "2024-05-01T12:00:20Z")
    assert "no finished minute" in msg


def test_every_problem_reported_at_once():
    with pytest.raises(InvalidBackfillRequest) as e:
        check("ftx", "x;y", "2099-01-01", "1990-01-01")
    assert len(e.value.problems) >= 4
