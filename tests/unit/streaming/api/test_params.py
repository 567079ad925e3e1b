"""Parameter validation: every bad value is a 4xx whose message says what is expected."""
from datetime import datetime, timezone

import pytest
from fastapi import HTTPException

from streaming.api import params

UTC = timezone.utc


@pytest.mark.parametrize("raw,words", [
    ("BTC-USDT'--", "not a symbol"), ("btc/usdt", "not a symbol"), ("Ｂ-USDT", "not a symbol"),
    ("A" * 100 + "-B", "not a symbol"), ("", "not a symbol"),
])
def test_bad_symbols(raw, words):
    with pytest.raises(HTTPException) as e:
        params.symbol(raw)
    assert e.value.status_code == 400 and words in e.value.detail
    assert "\n" not in e.value.detail and len(e.value.detail) < 200


def test_symbols_are_normalized_deduplicated_and_limited():
    assert params.symbols("btc-usdt, BTC-USDT,eth-btc", 5) == ["BTC-USDT", "ETH-BTC"]
    with pytest.raises(HTTPException) as e:
        params.symbols("A-B,C-D,E-F", 2)
    assert "too many symbols" in e.value.detail


def test_windows_are_whole_minutes_ordered_and_capped():
    start, end = params.window("2026-11-25T08:00:30Z", "2026-11-25T09:00:10", 24)
    assert (start, end) == (datetime(2026, 11, 25, 8, 0, tzinfo=UTC), datetime(2026, 11, 25, 9, 1, tzinfo=UTC))
    for s, e, words in (("2026-11-25T10:00Z", "2026-11-25T09:00Z", "after start"),
                        ("2026-11-01T00:00Z", "2026-11-25T00:00Z", "too long"),
                        ("2026-13-01", None, "not a date-time"), ("1990-01-01", None, "out of range"),
                        ("2026-11-25T08:00Z\x00", None, "not a date-time")):
        with pytest.raises(HTTPException) as exc:
            params.window(s, e, 24)
        assert exc.value.status_code == 400 and words in exc.value.detail


def test_exchanges():
    assert params.exchanges(None) == ["binance", "kucoin"]
    assert params.exchanges("KuCoin") == ["kucoin"]
    with pytest.raises(HTTPException):
        params.exchanges("binance,okx")
