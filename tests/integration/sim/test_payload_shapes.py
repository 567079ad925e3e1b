"""Every payload the simulator sends has the keys, JSON types and wrappers of the recorded samples."""
import json
import time

import pytest

from tests.integration.sim.helpers import connect, get, kucoin_connect, post, read_until, sample_json, sample_lines, shape


@pytest.fixture(scope="module")
def busy_sim():
    from tests.plugins.sim import SimProcess
    p = SimProcess(["--port", "0", "--symbols", "30", "--rate", "600"])
    yield p
    p.stop()


def unicorn(stream_prefix):
    return next(f for f in sample_lines("binance-ws-unicorn-fy-2020.jsonl")
                if isinstance(f, dict) and f.get("stream", "").endswith(stream_prefix))


def docs(name):
    return sample_json("binance-docs-examples.json")["websocket_streams"][name]


# --- Binance websocket

def test_binance_combined_streams_match_samples(busy_sim):
    url = busy_sim.env["BINANCE_WS_URL"] + "/stream?streams=btcusdt@trade/btcusdt@miniTicker/btcusdt@kline_1m/btcusdt@bookTicker/!miniTicker@arr"
    want = {"btcusdt@trade", "btcusdt@miniTicker", "btcusdt@kline_1m", "btcusdt@bookTicker", "!miniTicker@arr"}
    got = {}
    with connect(url, max_size=None) as ws:
        read_until(ws, lambda m: got.setdefault(m["stream"], m) is None and False or set(got) == want, 20)
    # trade: today's form (docs, no b/a); the older captures carry b/a as well
    assert shape(got["btcusdt@trade"]) == shape({"stream": "x", "data": docs("trade")})
    old = sample_json("binance-rest-nautilus-2021-10-22.json")["ws_frames"][0]["frame"]["data"]
    assert set(got["btcusdt@trade"]["data"]) == set(old) - {"b", "a"}
    assert shape(got["btcusdt@miniTicker"]) == shape(unicorn("@miniTicker"))
    assert shape(got["btcusdt@kline_1m"]) == shape(unicorn("@kline_1m"))
    tardis_book = next(f for f in sample_lines("binance-ws-tardis-2019.jsonl") if f["stream"].endswith("@bookTicker"))
    assert shape(got["btcusdt@bookTicker"]) == shape(tardis_book)
    arr = got["!miniTicker@arr"]
    assert set(arr) == {"stream", "data"} and isinstance(arr["data"], list) and arr["data"]
    assert shape(arr["data"]) == shape(sample_json("binance-miniTicker-arr-2022-10-14.json"))


def test_binance_raw_stream_is_bare_payload(busy_sim):
    with connect(busy_sim.env["BINANCE_WS_URL"] + "/ws/!miniTicker@arr", max_size=None) as ws:
        frame, _ = read_until(ws, lambda m: isinstance(m, list), 5)
    assert shape(frame) == shape(sample_json("binance-miniTicker-arr-2022-10-14.json"))
    recorded_raw = next(f for f in sample_lines("binance-ws-unicorn-fy-2020.jsonl") if isinstance(f, list))
    assert shape(frame) == shape(recorded_raw)
    assert len({e["s"] for e in frame}) == len(frame)  # one entry per symbol that changed


def test_binance_subscribe_unsubscribe_list_and_errors(busy_sim):
    with connect(busy_sim.env["BINANCE_WS_URL"] + "/ws", max_size=None) as ws:
        ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@trade", "ethusdt@miniTicker"], "id": 2}))
        reply, _ = read_until(ws, lambda m: isinstance(m, dict) and "id" in m, 5)
        assert reply == {"result": None, "id": 2} == sample_lines("binance-ws-unicorn-fy-2020.jsonl")[0]
        ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 3}))
        reply, _ = read_until(ws, lambda m: isinstance(m, dict) and m.get("id") == 3, 5)
        assert reply == {"result": ["btcusdt@trade", "ethusdt@miniTicker"], "id": 3}
        assert shape(reply) == shape(docs("list_subscriptions_response"))
        ws.send(json.dumps({"method": "UNSUBSCRIBE", "params": ["btcusdt@trade"], "id": 312}))
        reply, _ = read_until(ws, lambda m: isinstance(m, dict) and m.get("id") == 312, 5)
        assert reply == docs("unsubscribe_response")
        ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["nosuchcoin@trade"], "id": 2}))
        reply, _ = read_until(ws, lambda m: isinstance(m, dict) and "error" in m, 5)
        assert reply == sample_lines("binance-ws-errors-observed.jsonl")[0]["frame"]
        ws.send("not json")
        reply, _ = read_until(ws, lambda m: isinstance(m, dict) and "error" in m, 5)
        assert reply["error"]["code"] == 3 and reply["error"]["msg"].startswith("Invalid JSON")
        ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": -1}))
        reply, _ = read_until(ws, lambda m: isinstance(m, dict) and "error" in m, 5)
        assert reply["error"] == sample_lines("binance-ws-errors-observed.jsonl")[1]["inner_error"]
        ws.send(json.dumps({"method": "FROB", "id": 9}))
        reply, _ = read_until(ws, lambda m: isinstance(m, dict) and "error" in m, 5)
        assert reply["id"] == 9 and reply["error"]["code"] == 2 and "unknown variant" in reply["error"]["msg"]
        ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 4}))
        reply, _ = read_until(ws, lambda m: isinstance(m, dict) and m.get("id") == 4, 5)
        assert reply["result"] == ["ethusdt@miniTicker"]


# --- Binance REST

def test_binance_rest_shapes(busy_sim):
    base = busy_sim.env["BINANCE_REST_URL"]
    st, hdr, body = get(base + "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=10")
    assert st == 200 and int(hdr["X-MBX-USED-WEIGHT-1M"]) >= 2 and len(body) == 10
    nautilus = sample_json("binance-rest-nautilus-2021-10-22.json")["responses"]
    assert shape(body) == shape(nautilus[0]["body"])
    st, _, body = get(base + "/api/v3/aggTrades?symbol=BTCUSDT&limit=5")
    assert st == 200 and len(body) == 5 and shape(body) == shape(nautilus[1]["body"])
    rest_docs = sample_json("binance-docs-examples.json")["rest_api"]
    assert get(base + "/api/v3/ping")[2] == {}
    assert shape(get(base + "/api/v3/time")[2]) == shape(rest_docs["time_response"])
    st, _, body = get(base + "/api/v3/klines?symbol=NOPE&interval=1m")
    assert st == 400 and body == rest_docs["error_payload"]
    st, _, body = get(base + "/api/v3/klines?symbol=BTCUSDT&interval=7m")
    assert st == 400 and body == {"code": -1120, "msg": "Invalid interval."}
    st, _, body = get(base + "/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=2000&endTime=1000")
    assert st == 400 and body["code"] == -1023
    recorded = sample_json("binance-rest-exchangeInfo-spot-trimmed-2021-10-12.json")["response"]
    st, hdr, info = get(base + "/api/v3/exchangeInfo")
    assert st == 200 and set(info) == set(recorded)
    assert shape(info["rateLimits"]) == shape(recorded["rateLimits"])
    doc_sym = sample_json("binance-rest-exchangeInfo-doc-structure-2026.json")["response_doc_example"]["symbols"][0]
    for s in info["symbols"]:
        assert set(recorded["symbols"][0]) <= set(s) <= set(recorded["symbols"][0]) | set(doc_sym)
        assert s["symbol"] == s["baseAsset"] + s["quoteAsset"]
    assert {"TRADING", "BREAK"} == {s["status"] for s in info["symbols"]}


# --- KuCoin

def test_kucoin_bullet_and_rest_shapes(busy_sim):
    base = busy_sim.env["KUCOIN_REST_URL"]
    kdocs = sample_json("kucoin-docs-examples.json")["rest_current_docs"]
    st, _, bullet = post(base + "/api/v1/bullet-public")
    assert shape(bullet) == shape(kdocs["POST /api/v1/bullet-public"]["response_example"])
    for path, key in [("/api/v2/symbols", "GET /api/v2/symbols"), ("/api/v1/market/allTickers", "GET /api/v1/market/allTickers"),
                      ("/api/v1/timestamp", "GET /api/v1/timestamp"),
                      ("/api/v1/market/histories?symbol=BTC-USDT", "GET /api/v1/market/histories")]:
        st, hdr, body = get(base + path)
        assert st == 200 and "gw-ratelimit-remaining" in hdr
        want = kdocs[key]["response_example"]
        if key.endswith("symbols"):
            nulls = {k for k, v in want["data"][0].items() if v is None}
            assert all(set(s) == set(want["data"][0]) for s in body["data"])
            assert shape([{k: v for k, v in s.items() if k not in nulls} for s in body["data"]]) == \
                shape([{k: v for k, v in want["data"][0].items() if k not in nulls}])
        else:
            assert shape(body) == shape(want), path
    now_s = int(time.time())
    st, _, body = get(base + f"/api/v1/market/candles?symbol=BTC-USDT&type=1min&startAt={now_s - 3600}&endAt={now_s}")
    assert shape(body) == shape(sample_json("kucoin-rest-candles-1min-2022-01-17.json")["response"])
    times = [int(r[0]) for r in body["data"]]
    assert times == sorted(times, reverse=True) and all(t % 60 == 0 for t in times)
    st, _, cur = get(base + "/api/v3/currencies")
    currencies = sample_lines("kucoin-rest-doc-examples-load-markets-2025.jsonl")[0]
    assert set(cur["data"][0]) == set(currencies["response"]["data"][0])
    assert get(base + "/api/v1/status")[2] == sample_lines("kucoin-rest-doc-examples-load-markets-2025.jsonl")[1]["response"]
    st, _, body = get(base + "/api/v1/market/candles?symbol=NOPE-USDT&type=1min")
    assert body == {"code": "400100", "msg": "This pair is not provided at present."}


def test_kucoin_ws_protocol_and_topic_shapes(busy_sim):
    legacy = sample_json("kucoin-docs-examples.json")["ws_protocol_legacy_docs"]
    live = sample_lines("kucoin-ws-live-2026-10-03.jsonl")
    doc_frames = sample_lines("kucoin-ws-doc-examples.jsonl")
    ws, token, server = kucoin_connect(busy_sim, connect_id="hQvf8jkno")
    with ws:
        welcome = json.loads(ws.recv(timeout=5))
        assert welcome == legacy["welcome"]
        ws.send(json.dumps({"id": "1545910590801", "type": "ping"}))
        pong, _ = read_until(ws, lambda m: m.get("type") == "pong", 5)
        assert pong == legacy["pong"]
        for i, topic in enumerate(["/market/ticker:all", "/market/ticker:BTC-USDT,ETH-USDT", "/market/match:BTC-USDT",
                                   "/market/candles:BTC-USDT_1min"]):
            ws.send(json.dumps({"id": 100 + i, "type": "subscribe", "topic": topic, "privateChannel": False, "response": True}))
            ack, _ = read_until(ws, lambda m: m.get("type") == "ack", 5)
            assert ack == {"id": str(100 + i), "type": "ack"} and shape(ack) == shape(legacy["subscribe_ack"])
        got = {}

        def key(m):
            if m.get("type") != "message":
                return None
            return m["topic"].split(":")[0] + (":all" if m["topic"].endswith(":all") else "")

        read_until(ws, lambda m: got.setdefault(key(m), m) is None and False or
                   {"/market/ticker:all", "/market/ticker", "/market/match", "/market/candles"} <= set(got), 20)
        assert shape(got["/market/ticker:all"]) == shape(live[0]) and got["/market/ticker:all"]["subject"] != "trade.ticker"
        assert shape(got["/market/ticker"]) == shape(live[1])
        match_doc = next(f for f in doc_frames if f["topic"].startswith("/market/match"))
        candle_doc = next(f for f in doc_frames if f["topic"].startswith("/market/candles"))
        assert shape(got["/market/match"]) == shape(match_doc)
        assert shape(got["/market/candles"]) == shape(candle_doc)
        ws.send(json.dumps({"id": 7, "type": "subscribe", "topic": "/market/level9:BTC-USDT", "response": True}))
        err, _ = read_until(ws, lambda m: m.get("type") == "error", 5)
        assert err == {"id": "7", "type": "error", "code": 404, "data": "topic does not exist"}
        ws.send(json.dumps({"id": 8, "type": "subscribe", "topic": "/market/ticker:BSV-BTC", "response": True}))
        err, _ = read_until(ws, lambda m: m.get("type") == "error", 5)
        assert err["data"] == "topic /market/ticker:BSV-BTC is not found" and err["code"] == 404
        ws.send(json.dumps({"id": 9, "type": "unsubscribe", "topic": "/market/ticker:all", "response": True}))
        ack, _ = read_until(ws, lambda m: m.get("type") == "ack", 5)
        assert ack["id"] == "9"


def test_binance_properties(busy_sim):
    ex = sample_json("binance-docs-examples.json")["websocket_streams"]
    with connect(busy_sim.env["BINANCE_WS_URL"] + "/ws", max_size=None) as ws:
        ws.send(json.dumps(ex["get_property_request"]))
        reply, _ = read_until(ws, lambda m: isinstance(m, dict) and m.get("id") == 2, 5)
        assert reply == {"result": False, "id": 2}
        ws.send(json.dumps(ex["set_property_request"]))
        reply, _ = read_until(ws, lambda m: isinstance(m, dict) and m.get("id") == 5, 5)
        assert reply == ex["set_property_response"]
        ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["!miniTicker@arr"], "id": 6}))
        frame, _ = read_until(ws, lambda m: isinstance(m, dict) and m.get("stream") == "!miniTicker@arr", 5)
        assert isinstance(frame["data"], list)
        ws.send(json.dumps({"method": "GET_PROPERTY", "params": ["nope"], "id": 7}))
        reply, _ = read_until(ws, lambda m: isinstance(m, dict) and m.get("id") == 7, 5)
        assert reply["error"] == {"code": 0, "msg": "Unknown property"}
