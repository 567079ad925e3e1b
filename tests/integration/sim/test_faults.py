"""Each fault mode of the simulator does what it says (observed from a client's side)."""
import asyncio
import json
import threading
import time

import aiohttp
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.sim.helpers import (connect, get, kucoin_connect, post, read_until, sample_json, shape,
                                          together)


@pytest.fixture(scope="module")
def fsim():
    from tests.plugins.sim import SimProcess
    p = SimProcess(["--port", "0", "--symbols", "20", "--rate", "400", "--binance-ping-interval", "0.5"])
    yield p
    p.stop()


@pytest.fixture(autouse=True)
def clear(fsim):
    fsim.control.clear_faults()
    yield
    fsim.control.clear_faults()


def arr_url(sim):
    return sim.env["BINANCE_WS_URL"] + "/ws/!miniTicker@arr"


def wait_closed(ws, limit_s=10.0):
    """Read until the server ends the connection; returns the ConnectionClosed exception."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            ws.recv(timeout=deadline - time.monotonic())
        except ConnectionClosed as e:
            return e
        except TimeoutError:
            break
    raise AssertionError("connection still open")


def kucoin_ticker_all(sim, connect_id="f"):
    ws, token, server = kucoin_connect(sim, connect_id)
    assert json.loads(ws.recv(timeout=5))["type"] == "welcome"
    ws.send(json.dumps({"id": 1, "type": "subscribe", "topic": "/market/ticker:all", "response": True}))
    read_until(ws, lambda m: m.get("type") == "ack", 5)
    return ws, token


def test_drop_aborts_every_connection(fsim):
    b = connect(arr_url(fsim))
    k, _ = kucoin_ticker_all(fsim)
    b.recv(timeout=5)
    assert fsim.control.drop()["dropped"] == 2
    for ws in (b, k):
        e = wait_closed(ws)
        assert e.rcvd is None   # no close frame: the TCP connection was cut
    reasons = {c["close_reason"] for c in fsim.control.connections() if c["closed_ms"]}
    assert "dropped" in reasons


def retry_until(fn, limit_s=15.0):
    """fn() until it stops raising (the fault's time ran out); returns its result."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            return fn()
        except Exception:  # noqa: BLE001
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_outage_refuses_connections_then_recovers(fsim):
    b = connect(arr_url(fsim))
    fsim.control.outage(4, exchange="binance")
    wait_closed(b)
    with pytest.raises(InvalidStatus) as exc:
        connect(arr_url(fsim))
    assert exc.value.response.status_code == 503
    k, _ = kucoin_ticker_all(fsim)   # the other exchange is untouched
    k.close()
    assert get(fsim.env["BINANCE_REST_URL"] + "/api/v3/ping")[0] == 200   # REST stays up unless rest=True
    with retry_until(lambda: connect(arr_url(fsim))) as ws:              # and it ends
        assert isinstance(json.loads(ws.recv(timeout=5)), list)


def test_outage_with_rest(fsim):
    fsim.control.outage(3, exchange="kucoin", rest=True)
    assert get(fsim.env["KUCOIN_REST_URL"] + "/api/v1/timestamp")[0] == 503

    def ok():
        assert get(fsim.env["KUCOIN_REST_URL"] + "/api/v1/timestamp")[0] == 200
    retry_until(ok)


def test_stall_keeps_socket_open_without_data_or_pongs(fsim):
    k, _ = kucoin_ticker_all(fsim)
    b = connect(arr_url(fsim))
    b.recv(timeout=5)
    fsim.control.stall(6.0)
    time.sleep(0.2)
    for ws in (k, b):   # drain what was queued before the stall began
        try:
            while True:
                ws.recv(timeout=0.3)
        except TimeoutError:
            pass
    k.send(json.dumps({"id": "p1", "type": "ping"}))
    with pytest.raises(TimeoutError):
        k.recv(timeout=0.8)           # no data and no pong while stalled
    with pytest.raises(TimeoutError):
        b.recv(timeout=0.3)
    pong_waiter = b.ping()
    assert not pong_waiter.wait(0.3)  # websocket-level ping unanswered too
    msg, _ = read_until(k, lambda m: m.get("type") == "message", 12)  # data resumes on the same socket
    assert msg["topic"] == "/market/ticker:all"
    k.close()
    b.close()


@pytest.mark.parametrize("kind", ["malformed", "truncated"])
def test_corrupt_frames(fsim, kind):
    k, _ = kucoin_ticker_all(fsim)
    t0 = int(time.time() * 1000)
    fsim.control.corrupt(count=3, kind=kind, exchange="kucoin")
    bad, good = [], 0
    while len(bad) < 3 or good < 5:
        raw = k.recv(timeout=5)
        try:
            json.loads(raw)
            good += 1
        except ValueError:
            bad.append(raw)
    assert len(bad) == 3
    if kind == "truncated":
        assert all(b.startswith('{"topic":"/market/ticker:all"') for b in bad)
    k.close()
    cid = fsim.control.connections(exchange="kucoin")[-1]["conn_id"]
    flagged = [t for t in fsim.control.truth(exchange="kucoin", conn_id=cid, by="sent", since_ms=t0 - 1000)
               if t["flag"] == kind]
    assert len(flagged) == 3
    log = [e for e in fsim.control.fault_log() if e["fault"] == kind + "_sent"]
    assert len(log) >= 3


def test_duplicate_frames(fsim):
    k, _ = kucoin_ticker_all(fsim)
    fsim.control.duplicate(count=2, exchange="kucoin")
    frames = [k.recv(timeout=5) for _ in range(200)]
    dups = [a for a, b in zip(frames, frames[1:]) if a == b]
    assert len(dups) == 2
    k.close()


def test_oversized_frame(fsim):
    fsim.control.oversized(3 << 20, exchange="binance")
    with connect(arr_url(fsim), max_size=None) as ws:
        big = ws.recv(timeout=5)
    assert len(big) >= (3 << 20) - 64 and json.loads(big)["e"] == "oversized"
    fsim.control.oversized(2 << 20, exchange="binance")
    with connect(arr_url(fsim), max_size=1 << 20) as ws:   # a default-sized client must fail on it
        e = wait_closed(ws)
    assert e.sent is not None and e.sent.code == 1009


def test_rest_429_and_418_storms(fsim):
    b, k = fsim.env["BINANCE_REST_URL"], fsim.env["KUCOIN_REST_URL"]
    fsim.control.rest_errors(429, seconds=20)
    st, hdr, body = get(b + "/api/v3/klines?symbol=BTCUSDT&interval=1m")
    assert st == 429 and body["code"] == -1003 and int(hdr["Retry-After"]) >= 1
    st, hdr, body = get(k + "/api/v1/market/candles?symbol=BTC-USDT&type=1min")
    assert st == 429 and body == {"code": "429000", "msg": "Too Many Requests"}
    fsim.control.rest_errors(418, count=2, exchange="binance")
    for _ in range(2):
        st, hdr, body = get(b + "/api/v3/time")
        assert st == 418 and "IP banned until" in body["msg"] and "Retry-After" in hdr
    fsim.control.clear_faults()
    assert get(b + "/api/v3/time")[0] == 200


def test_binance_weight_budget_429_then_418(sim_factory):
    s = sim_factory(symbols=10, rate=10, weight_limit=10, ban_seconds=5)
    url = s.env["BINANCE_REST_URL"] + "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1"
    if time.time() % 60 > 55:       # keep the five calls inside one weight window
        time.sleep(61 - time.time() % 60)
    used = [int(get(url)[1]["X-MBX-USED-WEIGHT-1M"]) for _ in range(5)]
    assert used == [2, 4, 6, 8, 10]
    st, hdr, body = get(url)
    assert st == 429 and body["code"] == -1003 and "current limit is 10" in body["msg"]
    assert 1 <= int(hdr["Retry-After"]) <= 60
    st, hdr, body = get(url)        # calling again before Retry-After: banned
    assert st == 418 and body["msg"].startswith("Way too much request weight used; IP banned until")
    assert int(hdr["Retry-After"]) == 5


def test_slow_rest(fsim):
    fsim.control.slow_rest(delay_s=0.8, seconds=5, exchange="kucoin")
    t = time.monotonic()
    assert get(fsim.env["KUCOIN_REST_URL"] + "/api/v1/timestamp")[0] == 200
    assert time.monotonic() - t >= 0.8


def test_kucoin_token_expiry(fsim):
    k, token = kucoin_ticker_all(fsim)
    assert fsim.control.expire_tokens()["closed"] >= 1
    err, _ = read_until(k, lambda m: m.get("type") == "error", 5)
    assert err == sample_json("kucoin-errors-and-ws-frames-from-issues.json")["ws_frames"][1]["frame"]
    wait_closed(k)
    endpoint = post(fsim.env["KUCOIN_REST_URL"] + "/api/v1/bullet-public")[2]["data"]["instanceServers"][0]["endpoint"]
    with connect(f"{endpoint}?token={token}&connectId=again") as ws:   # the old token is refused
        first = json.loads(ws.recv(timeout=5))
        assert first["type"] == "error" and first["code"] == 401
        wait_closed(ws)
    k2, _ = kucoin_ticker_all(fsim, "new")   # a fresh bullet works
    k2.close()


def test_binance_server_shutdown(fsim):
    raw = connect(arr_url(fsim))
    comb = connect(fsim.env["BINANCE_WS_URL"] + "/stream?streams=!miniTicker@arr")
    fsim.control.server_shutdown(grace_s=0.3)
    docs = sample_json("binance-docs-examples.json")["websocket_streams"]
    ev, _ = read_until(raw, lambda m: isinstance(m, dict) and m.get("e") == "serverShutdown", 5)
    assert shape(ev) == shape(docs["serverShutdown_raw"])
    ev, _ = read_until(comb, lambda m: m.get("stream") == "!serverShutdown", 5)
    assert shape(ev) == shape(docs["serverShutdown_combined"])
    wait_closed(raw)
    wait_closed(comb)


def test_binance_max_lifetime_and_pong_timeout(sim_factory):
    s = sim_factory(symbols=10, rate=50, max_lifetime=1.5, binance_ping_interval=0.3, binance_pong_timeout=1.0)
    url = s.env["BINANCE_WS_URL"] + "/ws/!miniTicker@arr"

    async def silent_client():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, autoping=False) as ws:
                pings = 0
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.PING:
                        pings += 1            # never answered
                return pings, ws.close_code

    with connect(url) as ws:           # answers pings (websockets does it itself)
        e = wait_closed(ws, 10)
    pings, _ = asyncio.run(silent_client())
    assert pings >= 2
    reasons = [c["close_reason"] for c in s.control.connections()]
    assert reasons == ["max_lifetime", "pong_timeout"]
    assert e.rcvd is not None and e.rcvd.code == 1000


def test_kucoin_ping_timeout(sim_factory):
    s = sim_factory(symbols=10, rate=50, kucoin_ping_interval=1.5, kucoin_ping_timeout=1.0)
    quiet, _, _ = kucoin_connect(s, "quiet")
    pinger, _, _ = kucoin_connect(s, "pinger")
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        pinger.send(json.dumps({"id": str(time.time()), "type": "ping"}))
        read_until(pinger, lambda m: m.get("type") == "pong", 2)
        time.sleep(0.3)
    wait_closed(quiet, 5)
    conns = {c["path"] and c["conn_id"]: c for c in s.control.connections(exchange="kucoin")}
    reasons = sorted(str(c["close_reason"]) for c in conns.values())
    assert reasons == ["None", "ping_timeout"]
    pinger.close()


def read_frames(ws, limit_s):
    """[(client receive ms, parsed frame)] until the server closes the socket (or limit_s)."""
    out = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            raw = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        except (ConnectionClosed, TimeoutError):
            break
        out.append((int(time.time() * 1000), json.loads(raw)))
    return out


def overlap_check(fsim, exchange, old_frames, new_frames, ticks_of, grace_s, period_s):
    """The old socket kept sending for grace_s after its notice (data every period_s), the truth
    holds what each socket was sent (and the client got it), and from the new socket's first tick to
    the old one's last, both sockets carried the same ticks."""
    kept_ms = (grace_s - 2 * period_s - 0.1) * 1000     # the last push may come just after the close
    conns = fsim.control.connections(exchange)
    old = max((c for c in conns if c["notice"]), key=lambda c: c["notice_ms"])
    new = max((c for c in conns if c["opened_ms"] > old["notice_ms"]), key=lambda c: c["opened_ms"])
    assert old["closed_ms"] - old["notice_ms"] >= grace_s * 1000 - 5
    truth_old = fsim.control.truth(exchange, conn_id=old["conn_id"], by="sent")
    truth_new = fsim.control.truth(exchange, conn_id=new["conn_id"], by="sent")
    after = [t for t in truth_old if t["sent_ms"] >= old["notice_ms"]]
    assert after and after[-1]["sent_ms"] - old["notice_ms"] >= kept_ms
    assert all(t["sent_ms"] <= old["closed_ms"] for t in truth_old) and old["ticks_sent"] == len(truth_old)
    key = [(t["symbol"], t["event_ms"], t["price"]) for t in truth_old]
    got_old = ticks_of(old_frames)
    assert got_old == key[:len(got_old)] and len(key) - len(got_old) <= 40   # at most a frame in flight
    new_key = [(t["symbol"], t["event_ms"], t["price"]) for t in truth_new]
    got_new = ticks_of(new_frames)
    assert got_new and got_new == new_key[:len(got_new)]
    i, j = key.index(new_key[0]), new_key.index(key[-1])
    assert key[i:] == new_key[:j + 1]
    assert truth_new[j]["sent_ms"] - truth_new[0]["sent_ms"] >= kept_ms - 200        # the overlap
    return old, new


def rotation(old, call, is_notice, open_new, read_s):
    """Run the control call in the background, read `old` up to its notice, open the next socket as
    a rotating client does, then read both until the old one is closed."""
    answer: list = []
    caller = threading.Thread(target=lambda: answer.append(call()))
    caller.start()
    _, before = read_until(old, is_notice, 5)
    new = open_new()
    got_old, got_new = together(lambda: read_frames(old, read_s), lambda: read_frames(new, read_s))
    caller.join()
    new.close()
    return answer[0], before, got_old, got_new


def test_binance_server_shutdown_keeps_the_old_socket_sending_through_the_grace(fsim):
    old = connect(arr_url(fsim))
    first = json.loads(old.recv(timeout=5))
    answer, before, got_old, got_new = rotation(
        old, lambda: fsim.control.server_shutdown(grace_s=3.0),
        lambda m: isinstance(m, dict) and m.get("e") == "serverShutdown", lambda: connect(arr_url(fsim)), 6)
    assert answer["closed"] >= 1
    symbols = {x["exchange_symbol"]: x["symbol"] for x in fsim.control.symbols("binance")}

    def ticks_of(frames):
        return [(symbols[e["s"]], e["E"], e["c"]) for f in frames if isinstance(f, list) for e in f]

    assert sum(isinstance(f, list) for _, f in got_old) >= 2          # a push each second of the 3 s
    conn_old, _ = overlap_check(fsim, "binance", [first] + before + [f for _, f in got_old],
                                [f for _, f in got_new], ticks_of, 3.0, 1.0)
    assert conn_old["close_reason"] == "server_shutdown" and conn_old["notice"] == "serverShutdown"


def test_kucoin_token_expiry_keeps_the_old_socket_sending_through_the_grace(fsim):
    old, _ = kucoin_ticker_all(fsim, "old")
    _, before, got_old, got_new = rotation(
        old, lambda: fsim.control.expire_tokens(grace_s=1.5), lambda m: m.get("type") == "error",
        lambda: kucoin_ticker_all(fsim, "new")[0], 5)           # a fresh bullet, a new token

    def ticks_of(frames):
        return [(f["subject"], f["data"]["time"], f["data"]["price"]) for f in frames if f.get("type") == "message"]

    data_after = [at for at, f in got_old if f.get("type") == "message"]
    assert data_after and data_after[-1] - data_after[0] >= 700
    conn_old, _ = overlap_check(fsim, "kucoin", before + [f for _, f in got_old],
                                [f for _, f in got_new], ticks_of, 1.5, 0.1)
    assert conn_old["close_reason"] == "token_expired" and conn_old["notice"] == "token_expired"
