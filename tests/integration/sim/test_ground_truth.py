"""The ground truth reports exactly what each connection was sent, and the sim_factory contract holds."""
import json
import time
from decimal import Decimal

import pytest

from tests.integration.sim.helpers import connect, get, kucoin_connect, read_until


def test_sim_factory_prints_the_environment(sim_factory):
    s = sim_factory(symbols=12, rate=30, seed=9)
    assert set(s.env) >= {"BINANCE_WS_URL", "BINANCE_REST_URL", "KUCOIN_REST_URL", "SIM_CONTROL_URL", "SIM_PORT"}
    assert s.env["BINANCE_WS_URL"] == f"ws://127.0.0.1:{s.port}/binance-ws"
    assert s.env["BINANCE_REST_URL"] == f"http://127.0.0.1:{s.port}/binance"
    assert s.env["KUCOIN_REST_URL"] == f"http://127.0.0.1:{s.port}/kucoin"
    assert s.env["SIM_CONTROL_URL"] == f"http://127.0.0.1:{s.port}/_sim"
    st = s.control.status()
    assert st["config"]["symbols"] == 12 and st["config"]["seed"] == 9 and len(s.control.symbols("kucoin")) == 12
    s.stop()
    assert s.proc.returncode == 0


def test_truth_equals_what_each_connection_received(sim_factory, tmp_path):
    s = sim_factory(symbols=25, rate=300, truth_dir=tmp_path)
    k, _, _ = kucoin_connect(s, "truth")
    read_until(k, lambda m: m["type"] == "welcome", 5)
    k.send(json.dumps({"id": 1, "type": "subscribe", "topic": "/market/ticker:all", "response": True}))
    read_until(k, lambda m: m["type"] == "ack", 5)
    b = connect(s.env["BINANCE_WS_URL"] + "/stream?streams=!miniTicker@arr")
    got_k, got_b = [], []
    t_end = time.monotonic() + 3.0
    while time.monotonic() < t_end:
        got_k.append(json.loads(k.recv(timeout=5)))
    while len(got_b) < 3:
        got_b.append(json.loads(b.recv(timeout=5)))
    k.close()
    b.close()
    time.sleep(0.3)
    conns = {c["exchange"]: c for c in s.control.connections()}
    assert conns["kucoin"]["closed_ms"] >= conns["kucoin"]["opened_ms"] and conns["kucoin"]["close_reason"] == "client_closed"
    assert conns["kucoin"]["subscriptions"] == ["/market/ticker:all"]
    truth_k = s.control.truth(exchange="kucoin", conn_id=conns["kucoin"]["conn_id"])
    received_k = [("kucoin", m["subject"], m["data"]["time"], int(m["data"]["sequence"]), m["data"]["price"])
                  for m in got_k if m["type"] == "message"]
    sent_k = [(t["exchange"], t["symbol"], t["event_ms"], t["sequence"], t["price"]) for t in truth_k]
    assert received_k and sent_k[:len(received_k)] == received_k   # truth may hold more: sent before close
    assert all(t["kind"] == "ticker:all" and t["flag"] == "" for t in truth_k)
    last = {}
    for _, sym, ev, seq, _ in sent_k:          # per symbol, event time and sequence strictly increase
        assert ev > last.get(sym, (0, 0))[0] and seq > last.get(sym, (0, 0))[1]
        last[sym] = (ev, seq)
    truth_b = s.control.truth(exchange="binance", conn_id=conns["binance"]["conn_id"])
    received_b = [(e["s"], e["E"], e["c"]) for f in got_b for e in f["data"]]
    by_binance = {x["exchange_symbol"]: x["symbol"] for x in s.control.symbols("binance")}
    assert [(by_binance[a], e, c) for a, e, c in received_b] == \
        [(t["symbol"], t["event_ms"], t["price"]) for t in truth_b][:len(received_b)]
    # window queries on event time
    mid = received_k[len(received_k) // 2][2]
    window = s.control.truth(exchange="kucoin", since_ms=mid, until_ms=mid + 500)
    assert window and all(mid <= t["event_ms"] <= mid + 500 for t in window)
    # the truth files hold the same records
    s.stop()
    lines = [json.loads(x) for f in sorted(tmp_path.glob("ticks-*.jsonl")) for x in f.read_text().splitlines()]
    filed = [(r[0], r[3], r[4], r[5], r[6]) for r in lines if r[1] == conns["kucoin"]["conn_id"]]
    assert filed == sent_k
    events = [json.loads(x) for x in (tmp_path / "connections.jsonl").read_text().splitlines()]
    assert sorted(e["event"] for e in events) == ["close", "close", "open", "open"]


def test_true_candles_match_rest_for_both_exchanges(sim_factory):
    s = sim_factory(symbols=40, rate=100)
    now = int(time.time() * 1000)
    start = (now // 60_000 - 120) * 60_000
    for sym in [x for x in s.control.symbols("kucoin")][:6]:
        truth_k = s.control.candles("kucoin", sym["symbol"], start, start + 99 * 60_000)
        st, _, body = get(s.env["KUCOIN_REST_URL"] + f"/api/v1/market/candles?symbol={sym['symbol']}&type=1min"
                          f"&startAt={start // 1000}&endAt={start // 1000 + 6000}")
        rows = body["data"][::-1]
        assert [int(r[0]) * 1000 for r in rows] == [c["open_ms"] for c in truth_k]
        for r, c in zip(rows, truth_k):
            assert [Decimal(x) for x in r[1:6]] == [Decimal(c[k]) for k in ("open", "close", "high", "low", "volume")]
        if sym["illiquid"]:
            assert len(rows) < 100          # minutes without a trade have no row
    bsyms = {x["symbol"]: x for x in s.control.symbols("binance")}
    for name in ["BTC-USDT", next(n for n, x in bsyms.items() if x["illiquid"])]:
        truth_b = s.control.candles("binance", name, start, start + 99 * 60_000)
        st, _, rows = get(s.env["BINANCE_REST_URL"] + f"/api/v3/klines?symbol={bsyms[name]['exchange_symbol']}"
                          f"&interval=1m&startTime={start}&limit=100")
        assert len(rows) == 100 == len(truth_b)
        for r, c in zip(rows, truth_b):
            assert r[0] == c["open_ms"] and r[8] == c["trades"]
            assert [Decimal(x) for x in r[1:6]] == [Decimal(c[k]) for k in ("open", "high", "low", "close", "volume")]


def test_connections_count_what_each_socket_was_sent(sim_factory):
    """connections() counts, per socket, the ticks and frames the simulator wrote: equal to what the
    client received and to that socket's truth records; the client's X-Cryptopipe-Conn-Id is kept."""
    s = sim_factory(symbols=20, rate=300)
    b = connect(s.env["BINANCE_WS_URL"] + "/ws", additional_headers={"X-Cryptopipe-Conn-Id": "pipe-b-1"})
    k, _, _ = kucoin_connect(s, "acct", additional_headers={"X-Cryptopipe-Conn-Id": "pipe-k-1"})
    plain = connect(s.env["BINANCE_WS_URL"] + "/ws/!miniTicker@arr")
    b.send(json.dumps({"method": "SUBSCRIBE", "params": ["!miniTicker@arr", "btcusdt@trade"], "id": 1}))
    k.send(json.dumps({"id": "s", "type": "subscribe", "topic": "/market/ticker:all", "response": True}))
    s.control.duplicate(count=3, exchange="kucoin")
    got = {"b": [], "k": []}
    t_end = time.monotonic() + 2.5
    while time.monotonic() < t_end:
        for name, ws in (("b", b), ("k", k)):
            try:
                got[name].append(ws.recv(timeout=0.05))
            except TimeoutError:
                pass
    # stop the flow, then read everything that was written before the stop's reply
    b.send(json.dumps({"method": "UNSUBSCRIBE", "params": ["!miniTicker@arr", "btcusdt@trade"], "id": 2}))
    k.send(json.dumps({"id": "u", "type": "unsubscribe", "topic": "/market/ticker:all", "response": True}))
    for name, ws, done in (("b", b, lambda m: isinstance(m, dict) and m.get("id") == 2),
                           ("k", k, lambda m: m.get("id") == "u")):
        while True:
            raw = ws.recv(timeout=5)
            got[name].append(raw)
            if done(json.loads(raw)):
                break
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.5)               # nothing after the reply: the flow has stopped
    b.close()
    k.close()
    plain.close()
    time.sleep(0.3)

    def ticks(frame):
        m = json.loads(frame)
        if isinstance(m, list):
            return len(m)
        return int(m.get("e") == "trade" or m.get("type") == "message")

    (cb,) = s.control.connections(client_conn_id="pipe-b-1")
    (ck,) = s.control.connections(client_conn_id="pipe-k-1")
    for c, frames in ((cb, got["b"]), (ck, got["k"])):
        truth = s.control.truth(conn_id=c["conn_id"], by="sent")
        received = sum(ticks(f) for f in frames)
        assert received > 20
        assert c["ticks_sent"] == received == len(truth)
        assert c["data_frames_sent"] == sum(1 for f in frames if ticks(f))
        assert c["frames_sent"] == len(frames)             # replies, welcome and acks included
        assert (c["first_sent_ms"], c["last_sent_ms"]) == (truth[0]["sent_ms"], truth[-1]["sent_ms"])
        assert c["close_reason"] == "client_closed" and c["closed_ms"] >= c["opened_ms"]
    assert cb["ticks_flagged"] == {} and cb["exchange"] == "binance"
    assert ck["ticks_flagged"] == {"dup": 3} and ck["connect_id"] == "acct" and ck["exchange"] == "kucoin"
    assert sum(1 for t in s.control.truth(conn_id=ck["conn_id"]) if t["flag"] == "dup") == 3
    others = [c for c in s.control.connections() if c["conn_id"] not in (cb["conn_id"], ck["conn_id"])]
    assert len(others) == 1 and others[0]["client_conn_id"] is None
