"""RestFetcher against a fake ccxt client that answers with recorded payload shapes."""
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import ccxt
import pytest

from backfill.ratelimit import ExchangeBudget
from backfill.rest import FetchError, RestFetcher, parse_candle_rows
from tests.conftest import SAMPLES
from tests.unit.backfill.fakes import FakeClock

UTC = timezone.utc
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=3)


class FakeClient:
    """Just enough of a ccxt client: fetch_ohlcv reports every response via on_rest_response."""

    def __init__(self, exchange, script):
        self.exchange = exchange
        self.script = list(script)       # items: (status, headers, body) or an exception
        self.calls = []
        self.markets = None

    def on_rest_response(self, code, reason, url, method, headers, body, rh, rb):
        return body

    def set_markets(self, markets):
        self.markets = markets

    def fetch_ohlcv(self, symbol, timeframe, since, limit, params):
        self.calls.append((symbol, since, limit, dict(params)))
        item = self.script.pop(0)
        if callable(item):
            item = item(since, limit)
        status, headers, body = item
        self.on_rest_response(status, "", f"http://sim/{self.exchange}", "GET", headers, body, {}, None)
        if status == 429:
            raise ccxt.RateLimitExceeded(f"{self.exchange} 429 {body}")
        if status == 418:
            raise ccxt.DDoSProtection(f"{self.exchange} 418 {body}")
        if status >= 500:
            raise ccxt.ExchangeNotAvailable(f"{self.exchange} {status}")
        if status == 400:
            raise ccxt.BadSymbol(f"{self.exchange} {body}")
        return []


def binance_body(since_ms, n, volume="1.5", skip=()):
    rows = []
    for i in range(n):
        t = since_ms + i * 60_000
        if i in skip:
            continue
        v = volume(i) if callable(volume) else volume
        rows.append([t, f"{100 + i}.12345678", f"{101 + i}.00000001", f"{99 + i}.5", f"{100 + i}.9", v, t + 59_999,
                     "0", 1, "0", "0", "0"])
    return json.dumps(rows)


def kucoin_body(since_ms, n, skip=()):
    rows = [[str((since_ms + i * 60_000) // 1000), f"{i}.1", f"{i}.4", f"{i}.9", f"{i}.05", "3.00000001", "9"]
            for i in range(n) if i not in skip]
    return json.dumps({"code": "200000", "data": rows[::-1]})


def fetcher(exchange, script, **kw):
    clock = FakeClock()
    b = ExchangeBudget(exchange, sleep=clock.sleep, clock=clock.monotonic, wall=clock.wall)
    slept = []
    f = RestFetcher(exchange, client=FakeClient(exchange, script), budget=b, sleep=slept.append, **kw)
    f._markets_ready = True
    return f, slept


def test_parse_recorded_kucoin_candles_exactly():
    body = json.dumps(json.loads((SAMPLES / "kucoin-rest-candles-1min-2022-01-17.json").read_text())["response"])
    rows = parse_candle_rows("kucoin", body)
    t = datetime(2022, 1, 17, 11, 45, tzinfo=UTC)
    # row: [time, open, close, high, low, volume, turnover]
    assert rows[t] == (Decimal("42675.2"), Decimal("42728.8"), Decimal("42664.5"), Decimal("42717.9"),
                       Decimal("2.99849062"))
    assert len(rows) == 3


def test_parse_recorded_binance_klines_exactly():
    doc = json.loads((SAMPLES / "binance-rest-nautilus-2021-10-22.json").read_text())
    body = json.dumps(doc["responses"][0]["body"])
    rows = parse_candle_rows("binance", body)
    first = rows[datetime.fromtimestamp(1634943780, tz=UTC)]
    assert first == (Decimal("60685.22000000"), Decimal("60729.84000000"), Decimal("60670.90000000"),
                     Decimal("60719.27000000"), Decimal("21.63272000"))
    assert len(rows) == 10


@pytest.mark.parametrize("body", ["not json", '{"code":"400100","msg":"This pair is not provided at present."}',
                                  '[[1634943780000, "x", "1", "1", "1", "1"]]', '[[1634943781000, "1", "1", "1", "1", "1"]]',
                                  '[[1634943780000, "NaN", "1", "1", "1", "1"]]', '[["t"]]'])
def test_malformed_bodies_are_clear_errors(body):
    exchange = "kucoin" if "code" in body else "binance"
    with pytest.raises(FetchError):
        parse_candle_rows(exchange, body)


def test_binance_zero_volume_and_missing_rows_are_confirmed_empty():
    since = int(T0.timestamp() * 1000)
    f, _ = fetcher("binance", [(200, {"x-mbx-used-weight-1m": "12"},
                                binance_body(since, 10, volume=lambda i: "0.00000000" if i == 3 else "2", skip={7}))])
    r = f.fetch_minutes("BTC-USDT", T0, T0 + timedelta(minutes=10), now=NOW)
    assert r.complete and len(r.candles) == 10 and r.requests == 1
    assert [c.confirmed_empty for c in r.candles] == [i in (3, 7) for i in range(10)]
    assert r.candles[3].open == Decimal("103.12345678")          # zero-volume row keeps its prices
    assert r.candles[7].open is None and r.candles[7].volume is None
    assert r.candles[0].high == Decimal("101.00000001")
    # ccxt got the spot symbol, since, limit and an inclusive `until` for the chunk's last minute
    assert f.client.calls == [("BTC/USDT", since, 10, {"until": since + 10 * 60_000 - 1})]
    assert r.responses[0].headers == {"x-mbx-used-weight-1m": "12"}


def test_kucoin_missing_minute_is_confirmed_empty_and_order_is_handled():
    since = int(T0.timestamp() * 1000)
    f, _ = fetcher("kucoin", [(200, {}, kucoin_body(since, 5, skip={2}))])
    r = f.fetch_minutes("ETH-BTC", T0, T0 + timedelta(minutes=5), now=NOW)
    assert [c.open_time for c in r.candles] == [T0 + timedelta(minutes=i) for i in range(5)]
    assert [c.confirmed_empty for c in r.candles] == [False, False, True, False, False]
    c = r.candles[1]     # row [t, open, close, high, low, volume]
    assert (c.open, c.close, c.high, c.low, c.volume) == (Decimal("1.1"), Decimal("1.4"), Decimal("1.9"),
                                                          Decimal("1.05"), Decimal("3.00000001"))


def test_recent_missing_minutes_are_not_confirmed_empty():
    since = int(T0.timestamp() * 1000)
    f, _ = fetcher("kucoin", [(200, {}, kucoin_body(since, 5, skip={4}))])
    r = f.fetch_minutes("ETH-BTC", T0, T0 + timedelta(minutes=5), now=T0 + timedelta(minutes=5, seconds=20))
    assert not r.complete
    assert len(r.candles) == 4


def test_long_window_is_split_by_the_exchange_maximum():
    f, _ = fetcher("binance", [lambda since, n: (200, {}, binance_body(since, n))] * 3)
    r = f.fetch_minutes("BTC-USDT", T0, T0 + timedelta(minutes=2500), now=NOW + timedelta(days=2))
    assert [c[2] for c in f.client.calls] == [1000, 1000, 500]
    assert len(r.candles) == 2500 and not any(c.confirmed_empty for c in r.candles)


def test_429_storm_is_waited_out_not_lost():
    since = int(T0.timestamp() * 1000)
    storm = [(429, {"Retry-After": "3"}, '{"code":-1003,"msg":"Too many requests."}')] * 5
    f, _ = fetcher("binance", storm + [(200, {}, binance_body(since, 3))])
    r = f.fetch_minutes("BTC-USDT", T0, T0 + timedelta(minutes=3), now=NOW)
    assert len(r.candles) == 3 and r.rate_limit_waits == 5 and r.requests == 6
    assert f.budget.stats.rate_limited == 5


def test_418_ban_pauses_then_continues():
    since = int(T0.timestamp() * 1000)
    f, _ = fetcher("binance", [(418, {"Retry-After": "20"}, '{"code":-1003,"msg":"IP banned"}'),
                               (200, {}, binance_body(since, 2))])
    r = f.fetch_minutes("BTC-USDT", T0, T0 + timedelta(minutes=2), now=NOW)
    assert len(r.candles) == 2 and f.budget.stats.banned == 1


def test_endless_rate_limiting_gives_up_with_a_reason():
    f, _ = fetcher("binance", [(429, {"Retry-After": "60"}, "{}")] * 10, max_wait_s=150)
    with pytest.raises(FetchError, match="kept rate-limiting"):
        f.fetch_minutes("BTC-USDT", T0, T0 + timedelta(minutes=2), now=NOW)


def test_5xx_retries_with_backoff_then_fails():
    since = int(T0.timestamp() * 1000)
    f, slept = fetcher("kucoin", [(503, {}, "")] * 2 + [(200, {}, kucoin_body(since, 2))])
    r = f.fetch_minutes("ETH-BTC", T0, T0 + timedelta(minutes=2), now=NOW)
    assert r.retries == 2 and len(slept) == 2 and slept[1] > slept[0] / 2
    f, _ = fetcher("kucoin", [(503, {}, "")] * 10, max_attempts=3)
    with pytest.raises(FetchError, match="unreachable after 3 attempts"):
        f.fetch_minutes("ETH-BTC", T0, T0 + timedelta(minutes=2), now=NOW)


def test_bad_symbol_is_permanent():
    f, _ = fetcher("binance", [(400, {}, '{"code":-1121,"msg":"Invalid symbol."}')])
    with pytest.raises(FetchError, match="refused") as e:
        f.fetch_minutes("BTC-USDT", T0, T0 + timedelta(minutes=2), now=NOW)
    assert not e.value.retryable


class MarketsClient:
    """load_markets answers a scripted sequence: an exception to raise, or markets to return."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = 0
        self.last_response_headers = {"Retry-After": "7"}
        self.last_http_response = "{}"
        self.urls = {"api": "http://sim/binance"}

    def load_markets(self, reload=False):
        self.calls += 1
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def test_markets_load_waits_out_a_429_storm_and_a_418(monkeypatch):
    from backfill import rest
    monkeypatch.setattr(rest, "_MARKETS", {})
    clock = FakeClock()
    b = ExchangeBudget("binance", sleep=clock.sleep, clock=clock.monotonic, wall=clock.wall)
    markets = {"BTC/USDT": {"id": "BTCUSDT", "spot": True, "active": True}}
    client = MarketsClient([ccxt.RateLimitExceeded("binance 429 {}"), ccxt.DDoSProtection("binance 418 {}"),
                            markets])
    assert rest._markets("binance", client=client, budget=b) == markets
    assert client.calls == 3 and b.stats.rate_limited == 1 and b.stats.banned == 1
    assert clock.monotonic() - FakeClock().monotonic() >= 7 + 8      # Retry-After honoured both times


def test_markets_load_gives_up_on_endless_rate_limiting_and_fails_fast_otherwise(monkeypatch):
    from backfill import rest
    monkeypatch.setattr(rest, "_MARKETS", {})
    clock = FakeClock()
    b = ExchangeBudget("binance", sleep=clock.sleep, clock=clock.monotonic, wall=clock.wall)
    client = MarketsClient([ccxt.RateLimitExceeded("binance 429 {}")] * 100)
    with pytest.raises(FetchError, match="kept rate-limiting the markets request"):
        rest._markets("binance", client=client, budget=b)
    down = MarketsClient([ccxt.NetworkError("connection refused")])
    with pytest.raises(FetchError, match="cannot load binance markets"):
        rest._markets("binance", client=down, budget=b)
    assert down.calls == 1
