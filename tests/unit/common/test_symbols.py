import pytest

from common.exchanges import Binance, KuCoin
from common.symbols import InvalidSymbol, canonical, check_canonical, from_ccxt, to_ccxt


def test_canonical_forms():
    assert canonical("btc", "usdt") == "BTC-USDT"
    assert KuCoin.from_market_id("eth-btc") == "ETH-BTC"
    assert from_ccxt("SOL/USDC") == "SOL-USDC"
    assert to_ccxt("SOL-USDC") == "SOL/USDC"
    assert Binance.market_id("BNB-BTC") == "BNBBTC"


@pytest.mark.parametrize("hostile", [
    "BTC-USDT'; DROP TABLE ticks;--", "../../etc/passwd", "BTC--USDT", "BTC-USDT-X", "БТЦ-USDT", "",
    "BTC-USD\x00T", "btc usdt", "A" * 21 + "-USDT", None, 42, "BTC-USDT\n",
])
def test_hostile_symbols_rejected(hostile):
    with pytest.raises(InvalidSymbol):
        check_canonical(hostile)


def test_binance_map_keeps_trading_only():
    info = {"symbols": [
        {"symbol": "BTCUSDT", "status": "TRADING", "baseAsset": "BTC", "quoteAsset": "USDT"},
        {"symbol": "OLDBTC", "status": "BREAK", "baseAsset": "OLD", "quoteAsset": "BTC"},
        {"symbol": "EVIL", "status": "TRADING", "baseAsset": "E'V", "quoteAsset": "IL"},
    ]}
    m = Binance.symbol_map(Binance.markets_from_listing(info))
    assert m.get("BTCUSDT") == "BTC-USDT"
    assert "OLDBTC" not in m and "EVIL" not in m
    assert len(m) == 1
