"""Shard planning and shard scopes of the plugs (what each extractor connection subscribes to and
which symbols its session covers)."""
from __future__ import annotations

from common.exchanges import Binance, KuCoin


def test_plan_binance_default_symbols_extras_and_shards():
    assert Binance.plan_shards([], [], 1024) == [["!miniTicker@arr"]]
    assert Binance.plan_shards(["BTC-USDT", "ETH-BTC"], ["btcusdt@trade"], 1024) == [
        ["btcusdt@miniTicker", "ethbtc@miniTicker", "btcusdt@trade"]]
    symbols = [f"C{i}-USDT" for i in range(2100)]
    shards = Binance.plan_shards(symbols, [], 1024)
    assert [len(s) for s in shards] == [1024, 1024, 52]
    assert [len(s) for s in Binance.plan_shards(symbols, [], 5000)] == [1024, 1024, 52]     # never above 1024


def test_plan_kucoin_respects_300_topics_per_connection():
    assert KuCoin.plan_shards([], [], 300) == [["/market/ticker:all"]]
    symbols = [f"C{i}-USDT" for i in range(750)]
    shards = KuCoin.plan_shards(symbols, [], 300)
    counts = [sum(KuCoin.topic_count(t) for t in shard) for shard in shards]
    assert counts == [300, 300, 150]
    assert all(KuCoin.topic_count(t) <= 100 for shard in shards for t in shard)
    assert sorted(s for shard in shards for t in shard for s in t.split(":")[1].split(",")) == sorted(symbols)


def test_shard_scopes_name_each_connections_symbols():
    symbols = [f"C{i}-USDT" for i in range(2100)]
    shards = Binance.plan_shards(symbols, [], 1024)
    scopes = Binance.shard_scopes(symbols, shards)
    assert [len(s) for s in scopes] == [1024, 1024, 52]
    assert sorted(s for scope in scopes for s in scope) == sorted(symbols)
    assert scopes[2] == sorted(symbols[2048:])
    k_symbols = [f"K{i}-USDT" for i in range(750)]
    k_scopes = KuCoin.shard_scopes(k_symbols, KuCoin.plan_shards(k_symbols, [], 300))
    assert [len(s) for s in k_scopes] == [300, 300, 150] and set(k_scopes[1]) == set(k_symbols[300:600])
    # one connection, or an all-market stream: the shard covers all the extractor streams (None)
    assert Binance.shard_scopes(["BTC-USDT"], Binance.plan_shards(["BTC-USDT"], [], 1024)) == [None]
    assert KuCoin.shard_scopes([], [["/market/ticker:all"], ["/market/match:BTC-USDT"]]) == [None, []]
    assert Binance.shard_scopes([], [["!miniTicker@arr"], ["btcusdt@trade"]]) == [None, []]
    assert KuCoin.ticker_topic_symbols("/market/ticker:A-B,C-D") == ["A-B", "C-D"]
