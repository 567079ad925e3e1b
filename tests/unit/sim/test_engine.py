"""The engine on a simulated clock: trade feeds carry every trade, tickers sample them like the real
exchanges (Binance: last trade of each second; KuCoin: last trade of each 100 ms window), and every
stream agrees with what REST serves, drifts included."""
import json
from decimal import Decimal

import sim.app as app_mod
import sim.engine as engine_mod
from sim.app import Config, Sim
KUCOIN_TICKER_MS = 100     # KuCoin documents its ticker push frequency as "100ms"
from sim.market import MINUTE_MS, Market, aggregate, fmt_plain

MINUTE = 29_926_600   # 2026-11-24 ~22:40 UTC, any whole minute works
STEP_MS = 47          # not a divisor of the windows: a step often ends inside one


class FakeConn:
    """Stands for a websocket: keeps every frame the engine pushed, with the step time it came in."""

    def __init__(self, exchange, clock, combined=False):
        self.exchange, self.combined, self.keys, self.frames, self.clock = exchange, combined, set(), [], clock
        self.pushed_at: list[int] = []

    def wrap(self, stream, payload):
        return f'{{"stream":"{stream}","data":{payload}}}' if self.combined else payload

    def push(self, batch):
        self.frames.extend(batch)
        self.pushed_at.extend([self.clock["now"]] * len(batch))


def make_sim(monkeypatch, symbols=40, rate=400, seed=5):
    clock = {"now": MINUTE * MINUTE_MS}
    monkeypatch.setattr(engine_mod, "now_ms", lambda: clock["now"])
    monkeypatch.setattr(app_mod, "now_ms", lambda: clock["now"])
    return Sim(Config(symbols=symbols, rate=rate, seed=seed)), clock


def run(sim, clock, until_ms):
    """Step the engine every STEP_MS up to until_ms (inclusive)."""
    t = clock["now"]
    while t < until_ms:
        t += STEP_MS
        clock["now"] = t
        sim.engine.step(t)


def run_engine_over_minute(monkeypatch, symbols=40, rate=400):
    sim, clock = make_sim(monkeypatch, symbols, rate)
    eng = sim.engine
    conns = {"k_all": FakeConn("kucoin", clock), "k_match": FakeConn("kucoin", clock),
             "k_btc": FakeConn("kucoin", clock), "b_arr": FakeConn("binance", clock),
             "b_sym": FakeConn("binance", clock, combined=True)}
    eng.add(conns["k_all"], "all")
    eng.add(conns["b_arr"], "all")
    eng.add(conns["k_btc"], ("ticker", 0))
    for s in sim.markets["kucoin"].symbols:
        eng.add(conns["k_match"], ("match", s.idx))
    for kind in ("trade", "kline_1m", "miniTicker"):
        eng.add(conns["b_sym"], (kind, 0))
    run(sim, clock, (MINUTE + 1) * MINUTE_MS + 1450)
    return sim, clock, conns


def kucoin_data(conn):
    """[(subject or symbol, data, ticks, pushed_at)] of a KuCoin connection's frames."""
    out = []
    for (frame, ticks), at in zip(conn.frames, conn.pushed_at):
        msg = json.loads(frame)
        out.append((msg["subject"] if msg["subject"] != "trade.ticker" else msg["topic"].split(":")[1],
                    msg["data"], ticks, at))
    return out


def test_kucoin_ticker_pushes_the_latest_trade_of_each_100ms_window(monkeypatch):
    sim, clock, conns = run_engine_over_minute(monkeypatch)
    km = sim.markets["kucoin"]
    last_step = clock["now"]
    pushed = {}
    for sym, d, ticks, at in kucoin_data(conns["k_all"]):
        assert ticks == (("kucoin", "ticker:all", sym, d["time"], int(d["sequence"]), d["price"]),)
        pushed.setdefault(sym, []).append((d["time"], int(d["sequence"]), d["price"], d["size"], at))
    sampled = 0
    for s in km.symbols:
        trades = [tr for m in (MINUTE, MINUTE + 1) for tr in km.minute_trades(s, m) if tr[0] < last_step]
        last_of_window = {}
        for tr in trades:
            last_of_window[tr[0] // KUCOIN_TICKER_MS] = tr
        closed = [tr for w, tr in sorted(last_of_window.items()) if (w + 1) * KUCOIN_TICKER_MS <= last_step]
        got = pushed.get(s.canonical, [])
        assert [(t, seq, p, q) for t, seq, p, q, _ in got] == \
            [(t, seq, fmt_plain(p, s.price_decimals), fmt_plain(q, s.qty_decimals)) for t, p, q, seq in closed]
        for t, *_, at in got:
            # pushed by the first step at or after its window's end, whether or not a later trade came
            window_end = (t // KUCOIN_TICKER_MS + 1) * KUCOIN_TICKER_MS
            assert window_end <= at < window_end + STEP_MS
        sampled += len(trades) > len(closed) + 1
    assert sampled > 10      # most liquid symbols traded more than once in some window
    # /market/ticker:{symbol} is the same sample as ticker:all
    btc = [(d["time"], d["sequence"], d["price"]) for _, d, _, _ in kucoin_data(conns["k_btc"])]
    assert btc == [(t, str(seq), p) for t, seq, p, _, _ in pushed["BTC-USDT"]]


def test_websocket_trade_feeds_aggregate_to_the_rest_candles(monkeypatch):
    sim, clock, conns = run_engine_over_minute(monkeypatch)
    km = sim.markets["kucoin"]
    # KuCoin: /market/match frames of the minute (every trade) aggregate to the /api/v1/market/candles row
    by_symbol = {}
    for sym, d, ticks, _ in kucoin_data(conns["k_match"]):
        sym = d["symbol"]
        assert ticks == (("kucoin", "match", sym, int(d["time"]) // 10 ** 6, int(d["sequence"]), d["price"]),)
        by_symbol.setdefault(sym, []).append(d)
    checked = 0
    for s in km.symbols:
        rows = sim.kucoin.candle_rows(s, MINUTE, MINUTE, (MINUTE + 2) * MINUTE_MS)
        ticks = [d for d in by_symbol.get(s.canonical, []) if int(d["time"]) < (MINUTE + 1) * MINUTE_MS * 10 ** 6]
        if not rows:
            assert not ticks
            continue
        prices = [Decimal(d["price"]) for d in ticks]
        t, o, c, h, l, v, turnover = rows[0]
        assert int(t) == MINUTE * 60
        assert (Decimal(o), Decimal(c), Decimal(h), Decimal(l)) == (prices[0], prices[-1], max(prices), min(prices))
        assert Decimal(v) == sum(Decimal(d["size"]) for d in ticks)
        assert Decimal(turnover) == sum(Decimal(d["size"]) * Decimal(d["price"]) for d in ticks)
        times = [int(d["time"]) for d in ticks]
        assert times == sorted(set(times))
        checked += 1
    assert checked > 20
    # Binance: @trade of symbol 0 aggregates to the klines row; the closing kline frame equals it too
    bm = sim.markets["binance"]
    s0 = bm.symbols[0]
    b_sym, b_arr = conns["b_sym"], conns["b_arr"]
    row = sim.binance.klines_rows(s0, MINUTE, MINUTE, (MINUTE + 2) * MINUTE_MS)[0]
    trades = [json.loads(f)["data"] for f, _ in b_sym.frames if '"@trade"' not in f and "@trade" in f]
    trades = [d for d in trades if d["T"] < (MINUTE + 1) * MINUTE_MS]
    prices = [Decimal(d["p"]) for d in trades]
    assert [Decimal(x) for x in row[1:5]] == [prices[0], max(prices), min(prices), prices[-1]]
    assert Decimal(row[5]) == sum(Decimal(d["q"]) for d in trades) and row[8] == len(trades)
    closing = [json.loads(f)["data"]["k"] for f, _ in b_sym.frames if "@kline_1m" in f]
    closed = [k for k in closing if k["x"]]
    assert len(closed) == 1 and closed[0]["t"] == row[0]
    assert [closed[0][k] for k in ("o", "h", "l", "c", "v")] == row[1:6] and closed[0]["n"] == row[8]
    # !miniTicker@arr: one entry per symbol that traded in each second, c = last trade of that second
    last_e = {}
    for frame, ticks in b_arr.frames:
        arr = json.loads(frame)
        assert len({e["s"] for e in arr}) == len(arr) == len(ticks)
        for e in arr:
            assert e["E"] > last_e.get(e["s"], 0)
            last_e[e["s"]] = e["E"]
            assert Decimal(e["l"]) <= Decimal(e["c"]) <= Decimal(e["h"])
    last_second = [e for f, _ in b_arr.frames for e in json.loads(f) if e["s"] == s0.binance
                   and e["E"] < (MINUTE + 1) * MINUTE_MS]
    assert last_second[-1]["c"] == row[4]
    per_second = {}
    for d in trades:
        per_second[d["T"] // 1000] = d
    assert [(e["E"], e["c"]) for e in last_second] == [(d["T"], d["p"]) for _, d in sorted(per_second.items())]


def test_a_pending_ticker_waits_for_its_window_and_no_longer(monkeypatch):
    sim, clock = make_sim(monkeypatch, symbols=40, rate=40)
    km = sim.markets["kucoin"]
    conn = FakeConn("kucoin", clock)
    sim.engine.add(conn, "all")
    sim.engine.step(clock["now"])
    # a symbol's lone trade: the next one is more than a window later
    s, t = next((s, a[0]) for s in km.symbols for a, b in zip(km.minute_trades(s, MINUTE)[1:],
                                                             km.minute_trades(s, MINUTE)[2:])
                if b[0] - a[0] > 3 * KUCOIN_TICKER_MS and a[0] % KUCOIN_TICKER_MS < KUCOIN_TICKER_MS - 2)
    end = (t // KUCOIN_TICKER_MS + 1) * KUCOIN_TICKER_MS

    def pushed():
        return [json.loads(f)["data"]["time"] for f, _ in conn.frames if json.loads(f)["subject"] == s.canonical]

    run(sim, clock, t - STEP_MS)
    assert t not in pushed()
    sim.engine.step(t + 1)                 # the trade is taken; its window is still open
    assert t not in pushed()
    sim.engine.step(end - 1)
    assert t not in pushed()
    sim.engine.step(end)                   # the window is over: out it goes, with no later trade
    assert pushed()[-1] == t


def test_engine_far_behind_drops_the_backlog_unsent(monkeypatch):
    sim, clock = make_sim(monkeypatch, symbols=30, rate=300, seed=2)
    eng, conn = sim.engine, FakeConn("kucoin", clock)
    eng.add(conn, "all")
    t0 = MINUTE * MINUTE_MS
    for t in range(t0 + 50, t0 + 1000, 50):
        eng.step(t)
    sent_before = len(conn.frames)
    assert sent_before > 0 and eng.overload_skips == 0
    eng.step(t0 + 5000)                      # 4 s late: more than --max-lag
    assert eng.overload_skips == 1 and len(conn.frames) == sent_before
    eng.step(t0 + 5150)
    times = [json.loads(f)["data"]["time"] for f, _ in conn.frames[sent_before:]]
    assert times and min(times) >= t0 + 5000   # resumes at the present, nothing stale
    assert [e for e in sim.faults.log if e["fault"] == "overload_skip"]


def test_drift_moves_one_exchange_symbol_in_frames_rest_and_truth(monkeypatch):
    sim, clock = make_sim(monkeypatch, symbols=30, rate=300)
    twin = {ex: Market(ex, 5, m.symbols, 300) for ex, m in sim.markets.items()}   # the same market, no drift
    s = sim.markets["kucoin"].by_canonical["BTC-USDT"]
    k_match, k_all, b_trade = FakeConn("kucoin", clock), FakeConn("kucoin", clock), FakeConn("binance", clock)
    sim.engine.add(k_match, ("match", s.idx))
    sim.engine.add(k_all, "all")
    sim.engine.add(b_trade, ("trade", s.idx))
    run(sim, clock, MINUTE * MINUTE_MS + 20_000)
    start = clock["now"]
    answer = sim.set_drift({"exchange": "kucoin", "symbol": "BTC-USDT", "bps": "41.7", "seconds": 70})
    assert answer["start_ms"] == start and answer["end_ms"] == start + 70_000 and answer["bps"] == 41.7
    run(sim, clock, (MINUTE + 2) * MINUTE_MS + 1000)
    raw = {tr[3]: tr for m in (MINUTE, MINUTE + 1, MINUTE + 2) for tr in twin["kucoin"].minute_trades(s, m)}
    sent = [json.loads(f)["data"] for f, _ in k_match.frames]
    moved = 0
    for d in sent:
        t, p0 = raw[int(d["sequence"])][0], raw[int(d["sequence"])][1]
        p = Decimal(d["price"]) * 10 ** s.price_decimals
        assert p == int(p), d                                  # still on the symbol's tick
        if start <= t < start + 70_000:
            assert int(p) == max(1, (2 * p0 * 100_417 + 100_000) // 200_000) != p0
            moved += 1
        else:
            assert int(p) == p0
    assert moved > 100
    # REST rows (and the truth candles: the same function) aggregate exactly what the socket sent
    for minute in (MINUTE, MINUTE + 1):
        row = sim.kucoin.candle_rows(s, minute, minute, clock["now"])[0]
        ticks = [d for d in sent if minute * MINUTE_MS * 10 ** 6 <= int(d["time"]) < (minute + 1) * MINUTE_MS * 10 ** 6]
        prices = [Decimal(d["price"]) for d in ticks]
        assert [Decimal(x) for x in row[1:6]] == [prices[0], prices[-1], max(prices), min(prices),
                                                  sum(Decimal(d["size"]) for d in ticks)]
        assert sim.markets["kucoin"].candle(s, minute) == aggregate(minute, [
            (int(d["time"]) // 10 ** 6, int(Decimal(d["price"]) * 10 ** s.price_decimals),
             int(Decimal(d["size"]) * 10 ** s.qty_decimals), int(d["sequence"])) for d in ticks])
        assert sim.markets["kucoin"].candle(s, minute) != twin["kucoin"].candle(s, minute)
    # the other exchange's BTC-USDT and KuCoin's other symbols did not move
    braw = {tr[3]: tr[1] for m in (MINUTE, MINUTE + 1, MINUTE + 2) for tr in twin["binance"].minute_trades(s, m)}
    btrades = [json.loads(f)["t"] for f, _ in b_trade.frames]
    assert len(btrades) > 100
    assert all(Decimal(json.loads(f)["p"]) * 10 ** s.price_decimals == braw[json.loads(f)["t"]] for f, _ in b_trade.frames)
    assert sim.markets["binance"].candle(s, MINUTE + 1) == twin["binance"].candle(s, MINUTE + 1)
    others = [json.loads(f) for f, _ in k_all.frames if json.loads(f)["subject"] != "BTC-USDT"]
    assert len(others) > 100
    km = sim.markets["kucoin"]
    kraw = {(o.canonical, tr[3]): fmt_plain(tr[1], o.price_decimals) for o in km.symbols if o is not s
            for m in (MINUTE, MINUTE + 1, MINUTE + 2) for tr in twin["kucoin"].minute_trades(o, m)}
    assert all(msg["data"]["price"] == kraw[msg["subject"], int(msg["data"]["sequence"])] for msg in others)
    assert [e["fault"] for e in sim.faults.log if e["fault"].startswith("drift")] == ["drift"]
