"""A drift moves one exchange's price of one symbol, in its websocket ticks, REST and truth alike.

Two simulator processes with the same seed are the same market: `a` gets the drift, `b` is the
reference. The same trade (same sequence) must carry b's price times (1 + bps/10000) on a's drifted
exchange while the drift runs, and exactly b's price everywhere else.
"""
import json
import threading
import time
from decimal import ROUND_HALF_UP, Decimal

import pytest

from sim.control import SimControlError
from tests.integration.sim.helpers import connect, get, kucoin_connect, read_until, together

OPTS = ["--symbols", "40", "--rate", "60", "--seed", "3"]


@pytest.fixture(scope="module")
def twins():
    from tests.plugins.sim import SimProcess
    a, b = SimProcess(["--port", "0", *OPTS]), SimProcess(["--port", "0", *OPTS])
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(autouse=True)
def clear(twins):
    for s in twins:
        s.control.clear_faults()
    yield
    for s in twins:
        s.control.clear_faults()


def moved(price: Decimal, bps, decimals: int) -> Decimal:
    """b's price after a drift of bps: rounded half up to the symbol's tick, at least one tick."""
    tick = Decimal(1).scaleb(-decimals)
    return max(tick, (price * (1 + Decimal(str(bps)) / 10_000)).quantize(tick, ROUND_HALF_UP))


def decimals_of(s, symbol):
    _, _, body = get(s.env["KUCOIN_REST_URL"] + "/api/v2/symbols")
    inc = next(x["priceIncrement"] for x in body["data"] if x["symbol"] == symbol)
    return -Decimal(inc).as_tuple().exponent


def busiest_and_quiet(s):
    """The KuCoin symbol with the most trades, and one quiet enough that the last 100 trades REST
    lists (/market/histories) reach back past the start of the current minute."""
    syms = s.control.symbols("kucoin")
    busy = max(syms, key=lambda x: x["trades_per_minute"])["symbol"]
    quiet = max((x for x in syms if x["trades_per_minute"] <= 60), key=lambda x: x["trades_per_minute"])["symbol"]
    return busy, quiet


def kucoin_feed(s, topics):
    ws, _, _ = kucoin_connect(s, "drift")
    read_until(ws, lambda m: m["type"] == "welcome", 5)
    for i, topic in enumerate(topics):
        ws.send(json.dumps({"id": i, "type": "subscribe", "topic": topic, "response": True}))
        read_until(ws, lambda m: m["type"] == "ack", 5)
    return ws


def drain(sockets, seconds):
    """Every parsed frame of each socket, read concurrently for `seconds`."""
    until = time.monotonic() + seconds

    def reader(ws):
        out = []
        while time.monotonic() < until:
            try:
                out.append(json.loads(ws.recv(timeout=max(0.01, until - time.monotonic()))))
            except TimeoutError:
                break
        return out

    return together(*(lambda ws=ws: reader(ws) for ws in sockets))


def by_seq(frames, symbol=None):
    """{sequence: (time_ms, price)} of KuCoin message frames (ticker:all and match)."""
    out = {}
    for f in frames:
        if f.get("type") != "message":
            continue
        d = f["data"]
        sym = f["subject"] if f["topic"] == "/market/ticker:all" else d.get("symbol")
        if symbol is None or sym == symbol:
            t = d["time"] if isinstance(d["time"], int) else int(d["time"]) // 10 ** 6
            out[(sym, int(d["sequence"]))] = (t, Decimal(d["price"]))
    return out


def test_drift_moves_one_exchange_symbol_everywhere_and_nothing_else(twins):
    a, b = twins
    busy, quiet = busiest_and_quiet(a)
    pdec, qdec = decimals_of(a, busy), decimals_of(a, quiet)
    bsym = busy.replace("-", "").lower()
    sockets = [kucoin_feed(a, ["/market/ticker:all", f"/market/match:{busy}"]),
               kucoin_feed(b, ["/market/ticker:all", f"/market/match:{busy}"]),
               connect(a.env["BINANCE_WS_URL"] + f"/stream?streams={bsym}@trade"),
               connect(b.env["BINANCE_WS_URL"] + f"/stream?streams={bsym}@trade")]
    t0 = int(time.time() * 1000)
    answers: list = []
    later = threading.Timer(3.0, lambda: answers.append(a.control.drift("kucoin", busy, -37.5)))
    stop = threading.Timer(15.0, lambda: answers.append(a.control.drift("kucoin", busy, 0)))
    quiet_answer = a.control.drift("kucoin", quiet, 123)
    later.start()
    stop.start()
    ka, kb, ba, bb = drain(sockets, 18.0)
    for ws in sockets:
        ws.close()
    start, end = answers[0]["drift"]["start_ms"], answers[1]["drift"]["start_ms"]
    assert answers[0]["drift"]["end_ms"] is None and answers[1]["drift"]["ended"] == 1

    # KuCoin busy symbol, every trade (/market/match) and every push (/market/ticker:all) of a
    # against the same trade on b: moved exactly while the drift ran, and only then
    a_k, b_k = by_seq(ka), by_seq(kb)
    counts = {"during": 0, "before": 0, "after": 0}
    for key, (t, p) in a_k.items():
        if key not in b_k:
            continue
        sym = key[0]
        want = b_k[key][1]
        if sym == busy and start <= t < end:
            want = moved(want, -37.5, pdec)
            assert p != b_k[key][1]
            assert -p.as_tuple().exponent <= pdec                   # still on the symbol's tick
            counts["during"] += 1
        elif sym == busy:
            counts["before" if t < start else "after"] += 1
        elif sym == quiet and t >= quiet_answer["drift"]["start_ms"]:
            want = moved(want, 123, qdec)
        assert p == want, (key, t, p, want)
    assert counts["during"] >= 10 and counts["before"] >= 3 and counts["after"] >= 3, counts
    other = [k for k in a_k if k[0] not in (busy, quiet) and k in b_k]
    assert len(other) >= 50                                         # other symbols were compared too
    # Binance's busy symbol did not move: same trade id, same price, on both simulators
    a_b = {f["data"]["t"]: f["data"]["p"] for f in ba}
    b_b = {f["data"]["t"]: f["data"]["p"] for f in bb}
    common = set(a_b) & set(b_b)
    assert len(common) >= 10 and all(a_b[i] == b_b[i] for i in common)

    # the truth API holds what a's sockets sent: the drifted prices
    truth = {(r["symbol"], r["sequence"]): Decimal(r["price"]) for r in
             a.control.truth("kucoin", since_ms=t0, symbol=busy, kind="match")}
    assert all(truth[k] == p for k, (_, p) in a_k.items() if k in truth) and len(truth) >= 20

    # REST of the quiet symbol (drifted since quiet_answer, still running): its last trades are b's
    # moved from the drift's start, and a's candle of the open minute aggregates exactly them
    qstart = quiet_answer["drift"]["start_ms"]
    histories = "/api/v1/market/histories?symbol=" + quiet
    deadline = time.monotonic() + 60
    while not any(x["time"] // 10 ** 6 >= qstart for x in get(a.env["KUCOIN_REST_URL"] + histories)[2]["data"]):
        assert time.monotonic() < deadline, "no trade of the quiet symbol since the drift began"
        time.sleep(1)
    if time.time() % 60 > 55:                  # keep the snapshot inside one minute
        time.sleep(61 - time.time() % 60)
    minute = int(time.time()) // 60 * 60
    candles = f"/api/v1/market/candles?symbol={quiet}&type=1min&startAt={minute - 300}&endAt={minute + 60}"
    hist_a, rows = stable(lambda: (get(a.env["KUCOIN_REST_URL"] + histories)[2]["data"],
                                   get(a.env["KUCOIN_REST_URL"] + candles)[2]["data"]))
    hist_b = get(b.env["KUCOIN_REST_URL"] + histories)[2]["data"]
    hb = {x["sequence"]: Decimal(x["price"]) for x in hist_b}
    drifted = 0
    for x in hist_a:
        if x["sequence"] in hb:
            t = x["time"] // 10 ** 6
            want = moved(hb[x["sequence"]], 123, qdec) if t >= qstart else hb[x["sequence"]]
            assert Decimal(x["price"]) == want
            drifted += t >= qstart
    assert drifted >= 1
    assert hist_a[0]["time"] // 10 ** 9 < minute                  # the list reaches past the minute's start
    mine = [x for x in hist_a if x["time"] // 10 ** 9 >= minute]
    if mine:
        assert int(rows[0][0]) == minute
        prices = [Decimal(x["price"]) for x in mine]
        assert [Decimal(v) for v in rows[0][1:6]] == [prices[0], prices[-1], max(prices), min(prices),
                                                      sum(Decimal(x["size"]) for x in mine)]
    # the truth candles ARE what REST serves (drift included); history before the drift is b's
    truth_rows = a.control.candles("kucoin", quiet, (minute - 300) * 1000, (minute + 59) * 1000)
    assert [(c["open_ms"] // 1000, c["open"], c["close"], c["high"], c["low"], c["volume"]) for c in truth_rows
            if c["complete"]] == [tuple([int(r[0])] + r[1:6]) for r in rows[::-1] if int(r[0]) < minute]
    b_rows = get(b.env["KUCOIN_REST_URL"] + candles)[2]["data"]
    first_drifted = qstart // 60_000 * 60
    assert [r for r in rows if int(r[0]) < first_drifted] == [r for r in b_rows if int(r[0]) < first_drifted]
    assert [r for r in rows if int(r[0]) >= first_drifted] != [r for r in b_rows if int(r[0]) >= first_drifted]

    # recorded in the fault log and listed
    log = [e for e in a.control.fault_log() if e["fault"] in ("drift", "drift_end") and e["ms"] >= t0]
    assert [(e["fault"], e["symbol"], e["bps"]) for e in log] == \
        [("drift", quiet, 123), ("drift", busy, -37.5), ("drift_end", busy, -37.5)]
    listed = {(d["symbol"], d["bps"]): d for d in a.control.drifts("kucoin")}
    assert listed[busy, -37.5]["end_ms"] == end and not listed[busy, -37.5]["active"]
    assert listed[quiet, 123]["active"] and listed[quiet, 123]["end_ms"] is None
    assert [d["symbol"] for d in a.control.status()["drifts"]] == [quiet]
    assert b.control.drifts() == [] and a.control.drifts("binance") == []


def stable(fetch):
    """fetch() until two calls in a row agree (a trade may land between them)."""
    last = fetch()
    for _ in range(5):
        again = fetch()
        if again == last:
            return again
        last = again
    raise AssertionError("the answer kept changing")


def test_drift_for_seconds_and_clear_end_it(twins):
    a, _ = twins
    busy, _ = busiest_and_quiet(a)
    ans = a.control.drift("binance", busy, 55, seconds=1.0)["drift"]
    assert ans["end_ms"] == ans["start_ms"] + 1000
    assert [d["symbol"] for d in a.control.status()["drifts"]] == [busy]
    time.sleep(1.3)
    assert a.control.status()["drifts"] == []                      # ran out by itself
    a.control.drift("binance", busy, 10)
    a.control.clear_faults()
    d = [x for x in a.control.drifts("binance") if x["bps"] == 10][-1]
    assert not d["active"] and d["end_ms"] is not None
    assert any(e["fault"] == "drift_end" and e["bps"] == 10 for e in a.control.fault_log())


@pytest.mark.parametrize("body", [
    {"exchange": None, "symbol": "BTC-USDT", "bps": 10},          # one exchange, never both
    {"exchange": "kucoin", "symbol": "NOPE-USDT", "bps": 10},
    {"exchange": "kucoin", "symbol": "BTC-USDT", "bps": -10_000},  # prices would reach zero
    {"exchange": "kucoin", "symbol": "BTC-USDT", "bps": "lots"},
    {"exchange": "kucoin", "symbol": "BTC-USDT", "bps": 10, "seconds": -1},
    {"exchange": "kucoin", "symbol": "BTC-USDT", "bps": 10, "seconds": "inf"},
])
def test_drift_refuses_bad_requests(twins, body):
    a, _ = twins
    with pytest.raises(SimControlError, match="HTTP 400"):
        a.control.drift(**body)
    assert a.control.status()["drifts"] == []


def test_drift_flag_at_start(sim_factory):
    s = sim_factory(symbols=10, rate=10, drift="kucoin:ETH-USDT:-20:600")
    (d,) = s.control.drifts()
    assert (d["exchange"], d["symbol"], d["bps"], d["active"]) == ("kucoin", "ETH-USDT", -20, True)
    assert d["end_ms"] - d["start_ms"] == 600_000
