"""Binance adapter against every recorded Binance websocket frame, plus hostile input."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest

from common.exchanges import BadFrame, Binance, Control, Reject, UnknownSymbol, get_adapter

from .samples import RECEIVED_NS, binance_exchange_info, capture_frames, compact, json_file, jsonl_frames

MINI_ARR = "binance-miniTicker-arr-2022-10-14.json"


@pytest.fixture(scope="module")
def symbol_map() -> dict[str, str]:
    m = Binance.symbol_map(Binance.markets_from_listing(binance_exchange_info()))
    out = {raw: m.get(raw) for raw in ("BTCUSDT", "ETHUSDT", "ETHBTC", "BNBBTC", "NKNUSDT", "BLZETH", "LRCBTC",
                                       "RUNEEUR", "LINKBTC")}
    assert all(out.values())
    # not TRADING in the 2021 exchangeInfo capture, but streamed in 2019/2020 frames
    return {**out, "DOGEBNB": "DOGE-BNB", "TNBBTC": "TNB-BTC"}


@pytest.fixture
def adapter(symbol_map) -> Binance:
    return get_adapter("binance", symbol_map)


def test_get_adapter_names():
    assert isinstance(get_adapter("binance"), Binance)
    with pytest.raises(ValueError):
        get_adapter("kraken")


def test_symbol_map_values_must_be_canonical():
    with pytest.raises(ValueError):
        Binance({"BTCUSDT": "BTC/USDT"})


def test_accepts_the_symbol_map_built_from_exchange_info():
    m = Binance.symbol_map(Binance.markets_from_listing(binance_exchange_info()))
    adapter = Binance(m)
    assert adapter.symbols["BTCUSDT"] == "BTC-USDT"
    assert "BREAK" not in json.dumps(adapter.symbols)


# ---------------------------------------------------------------- recorded frames

def test_unicorn_fy_frames(adapter):
    frames = jsonl_frames("binance-ws-unicorn-fy-2020.jsonl")
    assert adapter.parse_ticks(frames[0], RECEIVED_NS) == []           # {"result":null,"id":2}
    agg = adapter.parse_ticks(frames[1], RECEIVED_NS)[0]
    assert (agg.symbol, agg.price, agg.event_time_ms, agg.sequence, agg.last_size) == \
        ("BTC-USDT", Decimal("9319.00000000"), 1592584651517, 315753210, Decimal("0.01864900"))
    trade = adapter.parse_ticks(frames[2], RECEIVED_NS)[0]             # old form with b/a
    assert (trade.price, trade.sequence, trade.event_time_ms) == (Decimal("9302.00000000"), 343719861, 1592591955766)
    ticker = adapter.parse_ticks(frames[3], RECEIVED_NS)[0]
    assert ticker.price == Decimal("9318.48000000")
    assert (ticker.bid, ticker.ask, ticker.bid_size, ticker.ask_size) == (
        Decimal("9318.18000000"), Decimal("9318.47000000"), Decimal("0.32000000"), Decimal("0.35414300"))
    assert ticker.sequence == 343729077 and ticker.last_size == Decimal("0.00250000")
    assert ticker.quote_volume_24h == Decimal("455442476.18534620")
    # raw-form !miniTicker@arr of 26: every element maps (the map has all but these symbols)
    rejects: list[Reject] = []
    arr = adapter.parse_ticks(frames[4], RECEIVED_NS, rejects)
    elements = json.loads(frames[4])
    assert len(arr) + len(rejects) == len(elements) == 26
    assert {t.symbol for t in arr} >= {"BTC-USDT", "ETH-USDT", "ETH-BTC", "LINK-BTC"}
    for tick in arr:
        src = next(e for e in elements if e["E"] == tick.event_time_ms and Decimal(e["c"]) == tick.price)
        assert tick.open_24h == Decimal(src["o"]) and tick.volume_24h == Decimal(src["v"])
    assert all(isinstance(r.error, UnknownSymbol) for r in rejects)
    mini = adapter.parse_ticks(frames[5], RECEIVED_NS)[0]
    assert (mini.price, mini.high_24h, mini.low_24h) == (
        Decimal("10456.56000000"), Decimal("10912.83000000"), Decimal("10385.02000000"))
    with pytest.raises(BadFrame) as exc:
        adapter.parse_ticks(frames[6], RECEIVED_NS)                    # kline: not a ticker
    assert exc.value.reason == "unsupported_event:kline"


def test_tardis_frames(adapter):
    frames = jsonl_frames("binance-ws-tardis-2019.jsonl")
    t1, t2 = (adapter.parse_ticks(f, RECEIVED_NS)[0] for f in frames[:2])
    assert (t1.symbol, t1.price, t1.sequence) == ("BNB-BTC", Decimal("0.00426990"), 40756030)
    assert t2.price == Decimal("0.00219650")
    book = adapter.parse_ticks(frames[2], RECEIVED_NS)[0]           # bookTicker: no e/E
    assert book.price == (Decimal("8010.00000000") + Decimal("8012.15000000")) / 2
    assert book.event_time_ms == RECEIVED_NS // 1_000_000
    assert (book.sequence, book.bid, book.ask_size) == (1127645101, Decimal("8010.00000000"), Decimal("0.03120100"))
    doge = adapter.parse_ticks(frames[3], RECEIVED_NS)[0]
    assert (doge.symbol, doge.price, doge.sequence) == ("DOGE-BNB", Decimal("0.00014360"), 64684)


def test_crypto_crawler_frames(adapter):
    frames = jsonl_frames("binance-ws-crypto-crawler-2021-2022.jsonl")
    assert adapter.parse_ticks(frames[0], RECEIVED_NS)[0].price == Decimal("58942.01000000")
    with pytest.raises(BadFrame) as exc:
        adapter.parse_ticks(frames[1], RECEIVED_NS)                 # depth20
    assert exc.value.reason == "unsupported_event:depth"
    assert adapter.parse_ticks(frames[2], RECEIVED_NS)[0].bid == Decimal("29010.90000000")   # !bookTicker
    assert adapter.parse_ticks(frames[3], RECEIVED_NS)[0].price == Decimal("1792.84000000")
    arr = adapter.parse_ticks(frames[4], RECEIVED_NS)                # combined !ticker@arr
    assert [(t.symbol, t.price) for t in arr] == [("ETH-BTC", Decimal("0.06150300"))]
    with pytest.raises(BadFrame):
        adapter.parse_ticks(frames[5], RECEIVED_NS)


def test_mini_ticker_arr_2022_raw_and_combined():
    raw = (__import__("tests.conftest", fromlist=["SAMPLES"]).SAMPLES / MINI_ARR).read_bytes()
    elements = json.loads(raw)
    full_map = {e["s"]: f"{e['s'][:-4]}-{e['s'][-4:]}" if e["s"].endswith(("USDT", "BUSD")) else
                f"{e['s'][:-3]}-{e['s'][-3:]}" for e in elements}
    adapter = Binance(full_map)
    ticks = adapter.parse_ticks(raw, RECEIVED_NS)
    assert len(ticks) == len(elements) >= 40
    for tick, src in zip(ticks, elements):
        assert tick.symbol == full_map[src["s"]]
        assert tick.price == Decimal(src["c"]) and str(tick.price) == src["c"]      # exact, never via float
        assert tick.event_time_ms == src["E"]
        assert tick.quote_volume_24h == Decimal(src["q"])
    combined = b'{"stream":"!miniTicker@arr","data":' + raw.strip() + b"}"
    assert adapter.parse_ticks(combined, RECEIVED_NS) == ticks


def test_array_with_bad_elements_strict_and_with_rejects(symbol_map):
    adapter = Binance(symbol_map)
    good = {"e": "24hrMiniTicker", "E": 1665778598150, "s": "ETHBTC", "c": "0.06778000", "o": "0.06666300",
            "h": "0.06788400", "l": "0.06633000", "v": "102155.49470000", "q": "6874.09078075"}
    unknown = dict(good, s="NEWCOINUSDT")
    negative = dict(good, s="BTCUSDT", c="-1")
    frame = compact({"stream": "!miniTicker@arr", "data": [good, unknown, negative, dict(good, s="ETHUSDT")]})
    with pytest.raises(UnknownSymbol) as exc:
        adapter.parse_ticks(frame, RECEIVED_NS)                     # strict: first bad element raises
    assert exc.value.symbol == "NEWCOINUSDT"
    rejects: list[Reject] = []
    ticks = adapter.parse_ticks(frame, RECEIVED_NS, rejects)
    assert [t.symbol for t in ticks] == ["ETH-BTC", "ETH-USDT"]
    assert [(r.index, r.reason) for r in rejects] == [(1, "unknown_symbol"), (2, "non_positive_price")]
    assert rejects[1].element == negative
    # after a metadata refresh the unknown symbol parses
    adapter.update_symbols({**symbol_map, "NEWCOINUSDT": "NEWCOIN-USDT"})
    assert len(adapter.parse_ticks(frame, RECEIVED_NS, [])) == 3


def test_cryptofeed_capture_every_frame(adapter):
    frames = capture_frames("cryptofeed-BINANCE.ws.1.0.txt")
    assert len(frames) == 265
    counts = {"tick": 0, "unsupported": 0}
    for frame in frames:
        stream = json.loads(frame)["stream"]
        if stream.endswith(("@bookTicker", "@aggTrade")):
            (tick,) = adapter.parse_ticks(frame, RECEIVED_NS)
            data = json.loads(frame)["data"]
            assert tick.symbol == adapter.symbols[data["s"]]
            if "@aggTrade" in stream:
                assert tick.price == Decimal(data["p"]) and tick.event_time_ms == data["E"]
            counts["tick"] += 1
        else:
            with pytest.raises(BadFrame) as exc:
                adapter.parse_ticks(frame, RECEIVED_NS)
            assert exc.value.reason in ("unsupported_event:depthUpdate", "unsupported_event:kline")
            counts["unsupported"] += 1
    assert counts == {"tick": 86, "unsupported": 179}    # 84 bookTicker + 2 aggTrade; 177 depth + 2 kline


def test_docs_examples():
    docs = json_file("binance-docs-examples.json")["websocket_streams"]
    adapter = Binance({"BNBBTC": "BNB-BTC", "BNBUSDT": "BNB-USDT", "BTCUSDT": "BTC-USDT"})
    for key in ("subscribe_response", "unsubscribe_response", "list_subscriptions_response",
                "set_property_response", "get_property_response", "serverShutdown_raw", "serverShutdown_combined"):
        assert adapter.parse_ticks(compact(docs[key]), RECEIVED_NS) == [], key
    assert adapter.parse_ticks(compact(docs["miniTicker"]), RECEIVED_NS)[0].price == Decimal("0.0025")
    assert adapter.parse_ticks(compact(docs["ticker_24hr"]), RECEIVED_NS)[0].bid == Decimal("0.0024")
    assert adapter.parse_ticks(compact(docs["trade"]), RECEIVED_NS)[0].sequence == 12345      # no b/a
    assert adapter.parse_ticks(compact(docs["aggTrade"]), RECEIVED_NS)[0].price == Decimal("0.001")
    assert adapter.parse_ticks(compact(docs["bookTicker"]), RECEIVED_NS)[0].symbol == "BNB-USDT"
    with pytest.raises(BadFrame):
        adapter.parse_ticks(compact(docs["avgPrice"]), RECEIVED_NS)
    err = jsonl_frames("binance-ws-errors-observed.jsonl")[0]
    assert adapter.parse_ticks(compact(json.loads(err)["frame"]), RECEIVED_NS) == []


# ---------------------------------------------------------------- hostile input

MINI = {"e": "24hrMiniTicker", "E": 1665778598150, "s": "BTCUSDT", "c": "19182.10", "o": "1", "h": "2",
        "l": "1", "v": "10", "q": "10"}


@pytest.mark.parametrize("frame,reason", [
    (b"", "malformed_json"),
    (b"{not json", "malformed_json"),
    (b"\xff\xfe{}", "malformed_json"),
    (b'"just a string"', "unexpected_shape"),
    (b"42", "unexpected_shape"),
    (compact({**MINI, "c": "NaN"}), "non_finite_price"),
    (compact({**MINI, "c": "Infinity"}), "non_finite_price"),
    (compact({**MINI, "c": "-Infinity"}), "non_finite_price"),
    (compact({**MINI, "c": "0"}), "non_positive_price"),
    (compact({**MINI, "c": "0.00000000"}), "non_positive_price"),
    (compact({**MINI, "c": "-5.5"}), "non_positive_price"),
    (compact({**MINI, "c": "1e5"}), "exponent_notation"),
    (compact({**MINI, "c": "1E-999999999"}), "exponent_notation"),
    (compact({**MINI, "c": "1" * 65}), "oversized_number"),
    (compact({**MINI, "c": " 12"}), "bad_number:c"),
    (compact({**MINI, "c": ""}), "bad_number:c"),
    (compact({**MINI, "c": "0x10"}), "bad_number:c"),
    (compact({**MINI, "c": 19182.1}), "mistyped_field:c"),
    (compact({**MINI, "c": None}), "mistyped_field:c"),
    (compact({**MINI, "v": "-1"}), "negative_amount"),
    (compact({k: v for k, v in MINI.items() if k != "c"}), "missing_field:c"),
    (compact({k: v for k, v in MINI.items() if k != "E"}), "missing_field:E"),
    (compact({k: v for k, v in MINI.items() if k != "s"}), "missing_field:s"),
    (compact({**MINI, "E": "1665778598150"}), "mistyped_field:E"),
    (compact({**MINI, "E": True}), "mistyped_field:E"),
    (compact({**MINI, "E": 1665778598150.5}), "mistyped_field:E"),
    (compact({**MINI, "E": 1_000_000_000_000}), "absurd_timestamp"),          # 2001
    (compact({**MINI, "E": RECEIVED_NS // 1_000_000 + 2 * 86_400_000}), "absurd_timestamp"),
    (compact({**MINI, "E": -1}), "absurd_timestamp"),
    (compact({**MINI, "s": ["BTCUSDT"]}), "mistyped_field:s"),
    (compact({**MINI, "s": "X" * 100}), "mistyped_field:s"),
    (compact({**MINI, "e": {"x": 1}}), "unsupported_event:{'x': 1}"),
    (compact([MINI, 5]), "mistyped_field:element"),
    (compact({"stream": 5, "data": MINI}), "mistyped_field:stream"),
    (b'{"e":"24hrMiniTicker","E":1665778598150,"s":"BTCUSDT","c":NaN}', "non_finite"),
    (b'{"e":"24hrMiniTicker","E":1665778598150,"s":"BTCUSDT","c":Infinity}', "non_finite"),
    (b"[" * 50 + b"]" * 50, "too_deep"),
    (b'{"a":' * 20 + b"1" + b"}" * 20, "too_deep"),
    (b"[" * 100_000, "too_deep"),
])
def test_hostile_frames_rejected_with_reason(adapter, frame, reason):
    with pytest.raises(BadFrame) as exc:
        adapter.parse_ticks(frame, RECEIVED_NS)
    assert exc.value.reason == reason


def test_oversized_frame(adapter):
    big = b"[" + b",".join([compact(MINI)] * 100_000) + b"]"
    assert len(big) > Binance.max_frame_bytes
    with pytest.raises(BadFrame) as exc:
        adapter.parse_ticks(big, RECEIVED_NS)
    assert exc.value.reason == "oversized"


def test_unknown_symbol_carries_raw_symbol(adapter):
    with pytest.raises(UnknownSymbol) as exc:
        adapter.parse_ticks(compact({**MINI, "s": "FOOBAR"}), RECEIVED_NS)
    assert exc.value.symbol == "FOOBAR" and exc.value.reason == "unknown_symbol"
    assert isinstance(exc.value, BadFrame)


def test_zero_bid_means_empty_book_side(adapter):
    docs = json_file("binance-docs-examples.json")["websocket_streams"]
    frame = compact({**docs["ticker_24hr"], "s": "BTCUSDT", "b": "0.00000000", "B": "0.00000000"})
    tick = adapter.parse_ticks(frame, RECEIVED_NS)[0]
    assert tick.bid is None and tick.bid_size == 0


def test_ticks_round_trip_through_the_transformed_format(adapter):
    from common.codec.ticks import line_tick, tick_line

    tick = adapter.parse_ticks(jsonl_frames("binance-ws-unicorn-fy-2020.jsonl")[3], RECEIVED_NS)[0]
    assert line_tick(tick_line(tick)) == tick


# ---------------------------------------------------------------- protocol pieces

def test_stream_names_and_shards():
    assert Binance.stream_name("BTC-USDT") == "btcusdt@miniTicker"
    assert Binance.stream_name("ETH-BTC", "book_ticker") == "ethbtc@bookTicker"
    streams = [f"s{i}@trade" for i in range(2500)] + ["s0@trade"]
    shards = Binance.shard_streams(streams)
    assert [len(s) for s in shards] == [1024, 1024, 452]
    assert [x for s in shards for x in s] == [f"s{i}@trade" for i in range(2500)]
    assert [len(s) for s in Binance.shard_streams(streams[:10], per_connection=4)] == [4, 4, 2]


def test_combined_url_and_subscribe():
    assert Binance.combined_url("ws://127.0.0.1:1/binance-ws/", ["!miniTicker@arr"]) == \
        "ws://127.0.0.1:1/binance-ws/stream?streams=!miniTicker@arr"
    assert Binance.combined_url("ws://h/x", ["a@trade", "b@trade"]) == "ws://h/x/stream?streams=a@trade/b@trade"
    long = [f"sym{i:05d}usdt@bookTicker" for i in range(1000)]
    assert Binance.combined_url("ws://h", long) == "ws://h/stream"
    assert json.loads(Binance.subscribe_message(["a@trade"], 7)) == {"method": "SUBSCRIBE", "params": ["a@trade"],
                                                                     "id": 7}


def test_classify():
    docs = json_file("binance-docs-examples.json")["websocket_streams"]
    assert Binance.classify(compact(docs["serverShutdown_raw"])).kind == "server_shutdown"
    assert Binance.classify(compact(docs["serverShutdown_combined"])).kind == "server_shutdown"
    assert Binance.classify(compact(docs["subscribe_response"])) == Control("result", "1")
    error = Binance.classify(compact(json.loads(jsonl_frames("binance-ws-errors-observed.jsonl")[0])["frame"]))
    assert error.kind == "error" and error.data["code"] == 2 and error.code == 2
    assert Binance.classify(jsonl_frames("binance-ws-unicorn-fy-2020.jsonl")[4]).kind == "data"
    assert Binance.classify(b"{oops").kind == "malformed"
