"""Unmodified ccxt, its base URLs pointed at the simulator, loads markets and fetches 1m candles.

The URL rewrite is done here (not with common.exchange_clients): the simulator shares no code
with the pipeline.
"""
import asyncio
import time

import ccxt
import ccxt.async_support as accxt
import pytest

LIVE = {"binance": "https://api.binance.com", "kucoin": "https://api.kucoin.com"}


def point_at(client, exchange: str, base: str):
    live = LIVE[exchange]
    client.urls["api"] = {k: (base + v[len(live):] if isinstance(v, str) and v.startswith(live) else v)
                          for k, v in client.urls["api"].items()}
    return client


def make(mod, exchange: str, sim):
    base = sim.env["BINANCE_REST_URL" if exchange == "binance" else "KUCOIN_REST_URL"]
    client = getattr(mod, exchange)({"enableRateLimit": False, "timeout": 20_000,
                                     "options": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False}})
    return point_at(client, exchange, base)


@pytest.fixture(scope="module")
def shared_sim():
    from tests.plugins.sim import SimProcess
    p = SimProcess(["--port", "0", "--symbols", "60", "--rate", "100"])
    yield p
    p.stop()


def check_ohlcv(sim, exchange: str, rows, since: int):
    truth = {c["open_ms"]: c for c in sim.control.candles(exchange, "BTC-USDT", since, since + 100 * 60_000)}
    assert rows, "no candles"
    for ts, o, h, l, c, v in rows:
        assert ts >= since and ts % 60_000 == 0
        t = truth[ts]
        assert (o, h, l, c, v) == tuple(float(t[k]) for k in ("open", "high", "low", "close", "volume"))
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)


@pytest.mark.parametrize("exchange", ["binance", "kucoin"])
def test_sync_ccxt_load_markets_and_fetch_ohlcv(shared_sim, exchange):
    client = make(ccxt, exchange, shared_sim)
    markets = client.load_markets()
    assert "BTC/USDT" in markets and markets["BTC/USDT"]["spot"]
    listed = {s["symbol"].replace("-", "/"): s for s in shared_sim.control.symbols(exchange)}
    assert set(m for m in markets if markets[m]["spot"]) == set(listed)
    if exchange == "binance":
        inactive = {m for m, v in markets.items() if v["active"] is False}
        assert inactive == {m for m, s in listed.items() if s["status"] == "BREAK"} and inactive
    since = (int(time.time() * 1000) // 60_000 - 90) * 60_000
    rows = client.fetch_ohlcv("BTC/USDT", "1m", since, 50)
    assert len(rows) == 50 if exchange == "binance" else 0 < len(rows) <= 90
    check_ohlcv(shared_sim, exchange, rows, since)


@pytest.mark.parametrize("exchange", ["binance", "kucoin"])
def test_async_ccxt_load_markets_and_fetch_ohlcv(shared_sim, exchange):
    async def run():
        client = make(accxt, exchange, shared_sim)
        try:
            markets = await client.load_markets()
            since = (int(time.time() * 1000) // 60_000 - 30) * 60_000
            rows = await client.fetch_ohlcv("ETH/USDT", "1m", since, 20)
            return markets, rows, since
        finally:
            await client.close()

    markets, rows, since = asyncio.run(run())
    assert "ETH/USDT" in markets
    truth = {c["open_ms"]: c for c in shared_sim.control.candles(exchange, "ETH-USDT", since, since + 40 * 60_000)}
    assert rows
    for ts, o, h, l, c, v in rows:
        assert float(truth[ts]["close"]) == c and float(truth[ts]["volume"]) == v
