"""KuCoin adapter against every recorded KuCoin websocket frame, plus hostile input and protocol pieces."""
from __future__ import annotations

import json
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest

from common.exchanges import BadFrame, KuCoin, UnknownSymbol, get_adapter

from .samples import RECEIVED_NS, capture_frames, compact, json_file, jsonl_frames


@pytest.fixture
def adapter() -> KuCoin:
    return get_adapter("kucoin")


def test_live_2026_frames(adapter):
    all_, single, level2 = jsonl_frames("kucoin-ws-live-2026-10-03.jsonl")
    (t,) = adapter.parse_ticks(all_, RECEIVED_NS)
    assert (t.exchange, t.symbol, t.price, t.event_time_ms, t.sequence) == (
        "kucoin", "MOG-USDT", Decimal("0.0000001141"), 1790983975701, 1226485690)
    assert (t.bid, t.bid_size, t.ask, t.ask_size, t.last_size) == (
        Decimal("0.000000114"), Decimal("110091671"), Decimal("0.0000001143"), Decimal("10171660581"),
        Decimal("133465474"))
    (t,) = adapter.parse_ticks(single, RECEIVED_NS)
    assert (t.symbol, t.price, t.event_time_ms, t.sequence) == ("ETH-USDT", Decimal("2667.64"), 1790984011673,
                                                               23242050174)
    with pytest.raises(BadFrame) as exc:
        adapter.parse_ticks(level2, RECEIVED_NS)
    assert exc.value.reason == "unsupported_topic:/market/level2"


def test_doc_examples(adapter):
    all_, single_doc, candles, match = jsonl_frames("kucoin-ws-doc-examples.jsonl")
    assert adapter.parse_ticks(all_, RECEIVED_NS)[0].symbol == "BTC-USDT"
    t = adapter.parse_ticks(single_doc, RECEIVED_NS)[0]           # `Time` spelled with a capital
    assert (t.event_time_ms, t.price) == (1704873323416, Decimal("0.08"))
    with pytest.raises(BadFrame):
        adapter.parse_ticks(candles, RECEIVED_NS)
    m = adapter.parse_ticks(match, RECEIVED_NS)[0]               # time in ns as a string
    assert (m.event_time_ms, m.price, m.sequence, m.last_size) == (
        1729843222921, Decimal("67523"), 11067996711960577, Decimal("0.003"))
    # the legacy example has no time: the receive time stands in
    legacy = json_file("kucoin-docs-examples.json")["ws_protocol_legacy_docs"]["legacy_ticker_example_without_time"]
    t = adapter.parse_ticks(compact(legacy), RECEIVED_NS)[0]
    assert t.event_time_ms == RECEIVED_NS // 1_000_000 and t.sequence == 1545896668986


def test_control_frames_from_docs_and_issues(adapter):
    legacy = json_file("kucoin-docs-examples.json")["ws_protocol_legacy_docs"]
    for key in ("welcome", "pong", "subscribe_ack", "unsubscribe_ack"):
        assert adapter.parse_ticks(compact(legacy[key]), RECEIVED_NS) == []
    issues = json_file("kucoin-errors-and-ws-frames-from-issues.json")["ws_frames"]
    for entry in issues:
        frame = entry.get("frame") or entry.get("repr")
        if frame:
            assert adapter.parse_ticks(compact(frame), RECEIVED_NS) == []
    for line in jsonl_frames("kucoin-ws-errors-observed-extra.jsonl"):
        entry = json.loads(line)
        for frame in entry.get("frames") or [entry["frame"]]:
            assert adapter.parse_ticks(compact(frame), RECEIVED_NS) == []
            assert KuCoin.classify(compact(frame)).kind == "error"


def test_tardis_and_crypto_crawler_frames(adapter):
    ticks = [adapter.parse_ticks(f, RECEIVED_NS)[0] for f in jsonl_frames("kucoin-ws-tardis-2022-08-16.jsonl")]
    assert [(t.symbol, t.price) for t in ticks] == [
        ("BTC-USDT", Decimal("24093.9")), ("LMR-BTC", Decimal("0.000001094")), ("XRP-USDT", Decimal("0.37587")),
        ("APE3S-USDT", Decimal("0.909"))]
    assert ticks[0].event_time_ms == 1660608000026                # 1660608000026914990 ns
    frames = jsonl_frames("kucoin-ws-crypto-crawler-2021-2022.jsonl")
    assert adapter.parse_ticks(frames[0], RECEIVED_NS)[0].price == Decimal("57659.6")     # data-first key order
    assert adapter.parse_ticks(frames[1], RECEIVED_NS)[0].event_time_ms == 1654032320677
    assert adapter.parse_ticks(frames[2], RECEIVED_NS)[0].symbol == "DOT-USDT"
    for frame in frames[3:]:                                       # candles, snapshot (numbers, not strings)
        with pytest.raises(BadFrame) as exc:
            adapter.parse_ticks(frame, RECEIVED_NS)
        assert exc.value.reason.startswith("unsupported_topic:")


def test_cryptofeed_capture_every_frame(adapter):
    frames = capture_frames("cryptofeed-KUCOIN.ws.1.0.txt")
    seen = {"control": 0, "ticker": 0, "match": 0, "unsupported": 0}
    for frame in frames:
        obj = json.loads(frame)
        if obj["type"] != "message":
            assert adapter.parse_ticks(frame, RECEIVED_NS) == []
            seen["control"] += 1
        elif obj["topic"].startswith(("/market/ticker", "/market/match")):
            (t,) = adapter.parse_ticks(frame, RECEIVED_NS)
            assert t.symbol == obj["topic"].split(":")[1]
            assert t.price == Decimal(obj["data"]["price"])
            assert t.sequence == int(obj["data"]["sequence"])
            seen["ticker" if "ticker" in obj["topic"] else "match"] += 1
        else:
            with pytest.raises(BadFrame):
                adapter.parse_ticks(frame, RECEIVED_NS)
            seen["unsupported"] += 1
    assert seen["control"] == 14 and seen["ticker"] > 800 and seen["match"] >= 18
    assert sum(seen.values()) == len(frames)


def test_symbol_map_restricts(adapter):
    restricted = KuCoin({"BTC-USDT": "BTC-USDT"})
    frame = jsonl_frames("kucoin-ws-live-2026-10-03.jsonl")[0]     # MOG-USDT
    with pytest.raises(UnknownSymbol) as exc:
        restricted.parse_ticks(frame, RECEIVED_NS)
    assert exc.value.symbol == "MOG-USDT"
    restricted.update_symbols({"MOG-USDT": "MOG-USDT"})
    assert restricted.parse_ticks(frame, RECEIVED_NS)[0].symbol == "MOG-USDT"


# ---------------------------------------------------------------- hostile input

TICK = {"topic": "/market/ticker:all", "type": "message", "subject": "BTC-USDT",
        "data": {"bestAsk": "67218.7", "bestAskSize": "1.9", "bestBid": "67218.6", "bestBidSize": "0.01",
                 "price": "67220", "sequence": "14691455768", "size": "0.00004316", "time": 1729757723612}}
MATCH = {"type": "message", "topic": "/market/match:BTC-USDT", "subject": "trade.l3match",
         "data": {"symbol": "BTC-USDT", "price": "24093.9", "sequence": "1636276321894", "size": "0.1",
                  "time": "1660608000026914990"}}


def _with(base: dict, **data) -> bytes:
    return compact({**base, "data": {**base["data"], **data}})


@pytest.mark.parametrize("frame,reason", [
    (b"{", "malformed_json"),
    (b"[]", "mistyped_field:frame"),
    (compact({**TICK, "type": "surprise"}), "unknown_type"),
    (compact({**TICK, "subject": "btc-usdt"}), "non_canonical_symbol"),
    (compact({**TICK, "subject": "BTC-USDT'; DROP TABLE ticks;--"}), "non_canonical_symbol"),
    (compact({**TICK, "subject": "BTC/USDT"}), "non_canonical_symbol"),
    (compact({**TICK, "subject": None}), "bad_symbol"),
    (compact({**TICK, "topic": "/market/ticker:BTC-USDT,ETH-USDT"}), "non_canonical_symbol"),
    (compact({**TICK, "topic": 7}), "mistyped_field:topic"),
    (compact({**TICK, "data": "x"}), "mistyped_field:data"),
    (compact({k: v for k, v in TICK.items() if k != "data"}), "missing_field:data"),
    (_with(TICK, price="NaN"), "non_finite_price"),
    (_with(TICK, price="inf"), "non_finite_price"),
    (_with(TICK, price="0"), "non_positive_price"),
    (_with(TICK, price="-1"), "non_positive_price"),
    (_with(TICK, price="6.722e4"), "exponent_notation"),
    (_with(TICK, price=67220), "mistyped_field:price"),
    (_with(TICK, bestBidSize="-3"), "negative_amount"),
    (_with(TICK, time=1729757723612 * 1000), "absurd_timestamp"),      # microseconds: far future
    (_with(TICK, time=17297577), "absurd_timestamp"),
    (_with(TICK, time="1729757723612"), "mistyped_field:time"),
    (_with(TICK, sequence="12a"), "bad_sequence:sequence"),
    (_with(TICK, sequence="99999999999999999999"), "bad_sequence:sequence"),
    (_with(TICK, sequence=-5), "bad_sequence:sequence"),
    (_with(MATCH, time="soon"), "bad_sequence:time"),
    (_with(MATCH, time="1660608000"), "absurd_timestamp"),           # seconds, not ns
    (_with(MATCH, symbol="ETH-USDT"), "symbol_mismatch"),
    (compact({**TICK, "x": [[[[[[[[[[1]]]]]]]]]]}), "too_deep"),
    (TICK and b'{"type":"message","topic":"/market/ticker:all","subject":"A-B","data":{"price":NaN}}', "non_finite"),
])
def test_hostile_frames_rejected_with_reason(adapter, frame, reason):
    with pytest.raises(BadFrame) as exc:
        adapter.parse_ticks(frame, RECEIVED_NS)
    assert exc.value.reason == reason


def test_oversized(adapter):
    frame = _with(TICK, pad="x" * (KuCoin.max_frame_bytes + 1))
    with pytest.raises(BadFrame) as exc:
        adapter.parse_ticks(frame, RECEIVED_NS)
    assert exc.value.reason == "oversized"


def test_null_and_zero_quotes_become_none(adapter):
    t = adapter.parse_ticks(_with(TICK, bestBid=None, bestAsk="0"), RECEIVED_NS)[0]
    assert t.bid is None and t.ask is None and t.price == Decimal("67220")


# ---------------------------------------------------------------- protocol pieces

def test_bullet_public_doc_example():
    body = json_file("kucoin-docs-examples.json")["rest_current_docs"]["POST /api/v1/bullet-public"][
        "response_example"]
    bullet = KuCoin.parse_bullet(compact(body))
    assert bullet.endpoint == "wss://ws-api-spot.kucoin.com/"
    assert (bullet.ping_interval_s, bullet.ping_timeout_s) == (18.0, 10.0)
    assert bullet.token.startswith("2neAiuYvAU61")
    assert KuCoin.bullet_url("http://127.0.0.1:5/kucoin/") == "http://127.0.0.1:5/kucoin/api/v1/bullet-public"


@pytest.mark.parametrize("body", [
    b"nope", b'{"code":"429000","msg":"Too Many Requests"}', b'{"code":"200000","data":{}}',
    b'{"code":"200000","data":{"token":"t","instanceServers":[{"endpoint":"http://x"}]}}',
    b'{"code":"200000","data":{"token":"t","instanceServers":[{"endpoint":"ws://x","pingInterval":"a"}]}}',
    b'{"code":"200000","data":{"token":"t","instanceServers":[{"endpoint":"ws://x","pingInterval":0}]}}',
])
def test_bullet_errors(body):
    with pytest.raises(ValueError):
        KuCoin.parse_bullet(body)


def test_ws_url_and_messages():
    url = KuCoin.ws_url("wss://ws-api-spot.kucoin.com/", "a+b/c=", "conn1")
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("wss", "ws-api-spot.kucoin.com", "/")
    assert parse_qs(parts.query) == {"token": ["a+b/c="], "connectId": ["conn1"]}
    url = KuCoin.ws_url("ws://127.0.0.1:9/kucoin-ws?x=1", "t", "c")
    assert parse_qs(urlsplit(url).query) == {"x": ["1"], "token": ["t"], "connectId": ["c"]}
    sub = json.loads(KuCoin.subscribe_message("/market/ticker:all", "5"))
    assert sub == {"id": "5", "type": "subscribe", "topic": "/market/ticker:all", "privateChannel": False,
                   "response": True}
    assert json.loads(KuCoin.ping_message("9")) == {"id": "9", "type": "ping"}


def test_ticker_topics_chunked_by_100():
    assert KuCoin.ticker_topics() == ["/market/ticker:all"]
    symbols = [f"C{i}-USDT" for i in range(250)]
    topics = KuCoin.ticker_topics(symbols)
    assert [KuCoin.topic_count(t) for t in topics] == [100, 100, 50]
    assert KuCoin.topic_count("/market/ticker:all") == 1
    with pytest.raises(ValueError):
        KuCoin.ticker_topics(["btc/usdt"])


def test_classify():
    legacy = json_file("kucoin-docs-examples.json")["ws_protocol_legacy_docs"]
    assert KuCoin.classify(compact(legacy["welcome"])) == KuCoin.classify(b'{"id":"hQvf8jkno","type":"welcome"}')
    assert KuCoin.classify(compact(legacy["welcome"])).id == "hQvf8jkno"
    assert KuCoin.classify(compact(legacy["pong"])).kind == "pong"
    ack = KuCoin.classify(compact(legacy["subscribe_ack"]))
    assert (ack.kind, ack.id) == ("ack", "1545910660739")
    expired = KuCoin.classify(b'{"type":"error","code":401,"data":"token is expired"}')
    assert KuCoin.token_expired(expired) and expired.data == "token is expired"
    assert not KuCoin.token_expired(KuCoin.classify(b'{"type":"error","code":509,"data":"exceed"}'))
    # a `message` frame is a data frame (the classification contract every plug shares)
    assert KuCoin.classify(jsonl_frames("kucoin-ws-live-2026-10-03.jsonl")[0]).kind == "data"
    assert KuCoin.classify(jsonl_frames("kucoin-ws-crypto-crawler-2021-2022.jsonl")[0]).kind == "data"
    assert KuCoin.classify(b"garbage").kind == "malformed"
    assert KuCoin.classify(b'{"type":"weird"}').kind == "malformed"
