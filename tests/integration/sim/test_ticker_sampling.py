"""A candle built from the simulator's tickers is not its REST candle, as on the real exchanges.

One real simulator process and real websocket clients watch one whole minute. Binance
`!miniTicker@arr` pushes each symbol's last trade of each second, KuCoin `/market/ticker:all` its
last trade of each 100 ms window; the trade feeds (`<sym>@trade`, `/market/match`) carry every
trade, and REST (klines, candles) aggregates every trade. So the candle a client builds from the
tickers equals the REST candle exactly in the minutes in which every trade was pushed, and differs
whenever a trade fell between two pushes. (Binance's miniTicker carries no trade size: its ticker
candle is compared on open/high/low/close and on the number of trades it saw; KuCoin's ticker
carries the trade's size, so its ticker candle has a volume too.)

Takes one to two minutes: it waits for the next whole minute and watches it to its end.
"""
import json
import time
from decimal import Decimal

from tests.integration.sim.helpers import connect, get, kucoin_connect, read_until, together

WINDOW_MS = {"binance": 1000, "kucoin": 100}     # the real exchanges' ticker push periods
SETTLE_MS = 2500                                 # the last window's push, after the minute's end


def now_ms():
    return int(time.time() * 1000)


def read_all(ws, until_ms, out, ping=None):
    """Append every parsed frame to `out` until the wall clock reaches until_ms (pings when asked)."""
    last_ping = time.monotonic()
    while now_ms() < until_ms:
        try:
            raw = ws.recv(timeout=0.5)
        except TimeoutError:
            raw = None
        if raw is not None:
            out.append(json.loads(raw))
        if ping and time.monotonic() - last_ping > 8:
            ws.send(ping())
            last_ping = time.monotonic()


def candle(trades):
    """(open, high, low, close, volume, count) of [(t_ms, price, size | None)] in time order."""
    prices = [p for _, p, _ in trades]
    volume = None if any(q is None for _, _, q in trades) else sum(q for _, _, q in trades)
    return prices[0], max(prices), min(prices), prices[-1], volume, len(trades)


def test_ticker_candles_differ_from_rest_candles_exactly_when_trades_fell_between_pushes(sim_factory):
    s = sim_factory(symbols=40, rate=12)
    bsyms = {x["exchange_symbol"]: x["symbol"] for x in s.control.symbols("binance") if x["status"] == "TRADING"}
    ksyms = [x["symbol"] for x in s.control.symbols("kucoin")]
    streams = ["!miniTicker@arr"] + [f"{b.lower()}@trade" for b in bsyms]
    b = connect(s.env["BINANCE_WS_URL"] + "/stream?streams=" + "/".join(streams), max_size=None)
    k, _, _ = kucoin_connect(s, "sampling")
    read_until(k, lambda m: m["type"] == "welcome", 5)
    for i, topic in enumerate(["/market/ticker:all", "/market/match:" + ",".join(ksyms)]):
        k.send(json.dumps({"id": i, "type": "subscribe", "topic": topic, "response": True}))
        read_until(k, lambda m: m["type"] == "ack", 5)
    minute = now_ms() // 60_000 + 1
    if minute * 60_000 - now_ms() < 1000:        # too close to the edge to be sure the feeds are up
        minute += 1
    start, end = minute * 60_000, (minute + 1) * 60_000
    frames = {"binance": [], "kucoin": []}
    pings = iter(range(10 ** 6))
    together(lambda: read_all(b, end + SETTLE_MS, frames["binance"]),
             lambda: read_all(k, end + SETTLE_MS, frames["kucoin"],
                              lambda: json.dumps({"id": f"p{next(pings)}", "type": "ping"})))
    b.close()
    k.close()

    # what the clients saw of the minute: every trade (trade feeds) and every push (tickers), per symbol
    trades = {"binance": {}, "kucoin": {}}
    pushes = {"binance": {}, "kucoin": {}}
    for f in frames["binance"]:
        if f["stream"] == "!miniTicker@arr":
            for e in f["data"]:
                pushes["binance"].setdefault(bsyms[e["s"]], []).append((e["E"], Decimal(e["c"]), None))
        else:
            d = f["data"]
            trades["binance"].setdefault(bsyms[d["s"]], []).append((d["T"], Decimal(d["p"]), Decimal(d["q"])))
    for f in frames["kucoin"]:
        if f.get("type") != "message":
            continue
        d = f["data"]
        if f["topic"] == "/market/ticker:all":
            pushes["kucoin"].setdefault(f["subject"], []).append((d["time"], Decimal(d["price"]), Decimal(d["size"])))
        else:
            trades["kucoin"].setdefault(d["symbol"], []).append((int(d["time"]) // 10 ** 6, Decimal(d["price"]),
                                                                 Decimal(d["size"])))
    for ex in trades:
        for per in (trades[ex], pushes[ex]):
            for sym in per:
                per[sym] = [x for x in per[sym] if start <= x[0] < end]

    figures = {}
    for ex, window in WINDOW_MS.items():
        complete = sampled = ohlc_differs = 0
        for sym in (bsyms.values() if ex == "binance" else ksyms):
            every, pushed = trades[ex].get(sym, []), pushes[ex].get(sym, [])
            rest = rest_candle(s, ex, sym, start)
            if not every:
                assert not pushed and (rest is None or rest[4] == 0), (ex, sym, rest)
                continue
            # REST aggregates every trade the trade feed carried
            assert rest == candle(every)[:4] + (candle(every)[4], len(every) if ex == "binance" else None), (ex, sym)
            # the ticker pushed exactly the last trade of each window, never another one
            last = {}
            for t, p, q in every:
                last[t // window] = (t, p, q)
            assert [(t, p) for t, p, _ in pushed] == [(t, p) for t, p, _ in last.values()], (ex, sym)
            mine = candle(pushed)
            rest_view = rest[:4] + ((rest[4], None) if ex == "kucoin" else (None, rest[5]))
            mine_view = mine[:4] + ((mine[4], None) if ex == "kucoin" else (None, mine[5]))
            if len(pushed) == len(every):
                complete += 1
                assert mine_view == rest_view, (ex, sym, mine, rest)
            else:
                sampled += 1
                assert mine_view != rest_view, (ex, sym, mine, rest)
                seen = {(t, p) for t, p, _ in pushed}
                skipped = [x for x in every if (x[0], x[1]) not in seen]
                top, bottom = max(p for _, p, _ in pushed), min(p for _, p, _ in pushed)
                # open/high/low/close differ exactly when a skipped trade made the open, or a high or
                # low that no pushed trade reached (the close is always pushed: it ends its window)
                expected = skipped[0][0] < pushed[0][0] and skipped[0][1] != pushed[0][1] or \
                    any(p > top or p < bottom for _, p, _ in skipped)
                assert (mine[:4] != rest[:4]) == expected, (ex, sym, mine, rest)
                ohlc_differs += mine[:4] != rest[:4]
        figures[ex] = {"complete": complete, "sampled": sampled, "ohlc_differs": ohlc_differs}
    for ex, fig in figures.items():
        assert fig["complete"] >= 1 and fig["sampled"] >= 1, figures   # both kinds of minute were seen
    assert figures["binance"]["ohlc_differs"] >= 1, figures
    print("ticker vs REST candles, one minute:", figures)


def rest_candle(s, ex, sym, start):
    """(open, high, low, close, volume, trades or None) of the exchange's REST candle, None if no row."""
    if ex == "binance":
        _, _, rows = get(s.env["BINANCE_REST_URL"] + f"/api/v3/klines?symbol={sym.replace('-', '')}&interval=1m"
                         f"&startTime={start}&limit=1")
        assert rows and rows[0][0] == start
        t, o, h, lo, c, v, _, _, n = rows[0][:9]
        return Decimal(o), Decimal(h), Decimal(lo), Decimal(c), Decimal(v), n
    _, _, body = get(s.env["KUCOIN_REST_URL"] + f"/api/v1/market/candles?symbol={sym}&type=1min"
                     f"&startAt={start // 1000}&endAt={start // 1000 + 60}")
    if not body["data"]:
        return None
    (t, o, c, h, lo, v, _), = body["data"]
    assert int(t) * 1000 == start
    return Decimal(o), Decimal(h), Decimal(lo), Decimal(c), Decimal(v), None
