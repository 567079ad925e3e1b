"""The market is a pure function of the seed, and what the websockets send aggregates to what REST serves."""
import json
import time
from decimal import Decimal

import pytest

import sim.engine as engine_mod
from sim.app import Config, Sim
from sim.market import MINUTE_MS, Market, aggregate, build_universe, fmt_fixed, fmt_plain

MINUTE = 29_926_600   # 2026-11-24 ~22:40 UTC, any whole minute works


def test_universe_is_deterministic_and_canonical():
    a, b = build_universe(7, 300), build_universe(7, 300)
    assert [s.canonical for s in a] == [s.canonical for s in b]
    assert len({s.canonical for s in a}) == 300 == len({s.binance for s in a})
    assert all(s.canonical == f"{s.base}-{s.quote}" and s.base.isalnum() and s.base.isupper() for s in a)
    assert any(s.illiquid for s in a) and any(s.break_on_binance for s in a)
    assert [s.canonical for s in build_universe(8, 300)] != [s.canonical for s in a]


def test_trades_are_a_function_of_seed_with_strictly_increasing_times():
    u = build_universe(3, 50)
    m1, m2 = Market("kucoin", 3, u, 300), Market("kucoin", 3, u, 300)
    for s in u[:10]:
        t1 = m1.minute_trades(s, MINUTE)
        assert t1 == m2.minute_trades(s, MINUTE)
        times = [t for t, *_ in t1]
        assert times == sorted(set(times)) and all(MINUTE * MINUTE_MS <= t < (MINUTE + 1) * MINUTE_MS for t in times)
        seqs = [t[3] for t in t1]
        assert seqs == sorted(set(seqs))
    assert Market("binance", 3, u, 300).minute_trades(u[0], MINUTE) != m1.minute_trades(u[0], MINUTE)


def test_illiquid_symbols_have_empty_minutes_and_break_symbols_never_trade():
    u = build_universe(1, 200)
    m = Market("binance", 1, u, 200)
    ill = [s for s in u if s.illiquid][0]
    empties = sum(1 for k in range(100) if m.candle(ill, MINUTE + k) is None)
    assert 30 < empties < 90
    brk = [s for s in u if s.break_on_binance][0]
    assert all(m.minute_trades(brk, MINUTE + k) == [] for k in range(20))
    assert Market("kucoin", 1, u, 200).lam_per_minute[brk.idx] > 0   # BREAK is a Binance status only


def test_trade_stream_equals_minute_lists_across_minutes():
    u = build_universe(1, 20)
    m = Market("binance", 1, u, 100)
    s = u[0]
    gen = m.trade_stream(s, MINUTE)
    want = m.minute_trades(s, MINUTE) + m.minute_trades(s, MINUTE + 1)
    assert [next(gen) for _ in range(len(want))] == want


@pytest.mark.parametrize("value,dec,pad,want", [(620568, 1, 8, "62056.80000000"), (1141, 10, 10, "0.0000001141"),
                                                 (5, 0, 8, "5.00000000"), (12, 3, 8, "0.01200000")])
def test_fixed_format(value, dec, pad, want):
    assert fmt_fixed(value, dec, pad) == want
    assert Decimal(want) == Decimal(value) / Decimal(10) ** dec


@pytest.mark.parametrize("value,dec,want", [(672200, 1, "67220"), (1141, 10, "0.0000001141"), (1050, 2, "10.5"),
                                             (7, 0, "7")])
def test_plain_format(value, dec, want):
    assert fmt_plain(value, dec) == want


class FakeConn:
    def __init__(self, exchange, combined=False):
        self.exchange, self.combined, self.keys, self.frames = exchange, combined, set(), []

    def wrap(self, stream, payload):
        return f'{{"stream":"{stream}","data":{payload}}}' if self.combined else payload

    def push(self, batch):
        self.frames.extend(batch)


def run_engine_over_minute(monkeypatch, symbols=40, rate=400):
    clock = {"now": MINUTE * MINUTE_MS}
    monkeypatch.setattr(engine_mod, "now_ms", lambda: clock["now"])
    sim = Sim(Config(symbols=symbols, rate=rate, seed=5))
    eng = sim.engine
    k_all, b_arr, b_sym = FakeConn("kucoin"), FakeConn("binance"), FakeConn("binance", combined=True)
    eng.add(k_all, "all")
    eng.add(b_arr, "all")
    for kind in ("trade", "kline_1m", "miniTicker"):
        eng.add(b_sym, (kind, 0))
    for t in range(MINUTE * MINUTE_MS + 50, (MINUTE + 1) * MINUTE_MS + 1500, 50):
        eng.step(t)
    return sim, k_all, b_arr, b_sym


def test_websocket_ticks_aggregate_to_the_rest_candles(monkeypatch):
    sim, k_all, b_arr, b_sym = run_engine_over_minute(monkeypatch)
    km = sim.markets["kucoin"]
    # KuCoin: /market/ticker:all frames of the minute aggregate to the /api/v1/market/candles row
    by_symbol = {}
    for frame, ticks in k_all.frames:
        msg = json.loads(frame)
        d = msg["data"]
        assert ticks == (("kucoin", "ticker:all", msg["subject"], d["time"], int(d["sequence"]), d["price"]),)
        by_symbol.setdefault(msg["subject"], []).append(d)
    checked = 0
    for s in km.symbols:
        rows = sim.kucoin.candle_rows(s, MINUTE, MINUTE, (MINUTE + 2) * MINUTE_MS)
        ticks = [d for d in by_symbol.get(s.canonical, []) if d["time"] < (MINUTE + 1) * MINUTE_MS]
        if not rows:
            assert not ticks
            continue
        prices = [Decimal(d["price"]) for d in ticks]
        t, o, c, h, l, v, turnover = rows[0]
        assert int(t) == MINUTE * 60
        assert (Decimal(o), Decimal(c), Decimal(h), Decimal(l)) == (prices[0], prices[-1], max(prices), min(prices))
        assert Decimal(v) == sum(Decimal(d["size"]) for d in ticks)
        assert Decimal(turnover) == sum(Decimal(d["size"]) * Decimal(d["price"]) for d in ticks)
        times = [d["time"] for d in ticks]
        assert times == sorted(set(times))
        checked += 1
    assert checked > 20
    # Binance: @trade of symbol 0 aggregates to the klines row; the closing kline frame equals it too
    bm = sim.markets["binance"]
    s0 = bm.symbols[0]
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


def test_binance_zero_volume_minute_repeats_the_previous_close(monkeypatch):
    sim = Sim(Config(symbols=200, rate=200, seed=1))
    m = sim.markets["binance"]
    ill = [s for s in m.symbols if s.illiquid][0]
    rows = sim.binance.klines_rows(ill, MINUTE, MINUTE + 59, (MINUTE + 100) * MINUTE_MS)
    assert len(rows) == 60
    zero = [i for i, r in enumerate(rows) if r[8] == 0]
    assert zero and all(rows[i][5] == "0.00000000" for i in zero)
    for i in zero:
        if i > 0:
            assert rows[i][1] == rows[i][2] == rows[i][3] == rows[i][4] == rows[i - 1][4]
    k = sim.kucoin.candle_rows(ill, MINUTE, MINUTE + 59, (MINUTE + 100) * MINUTE_MS)
    assert len(k) == sum(1 for mm in range(MINUTE, MINUTE + 60) if sim.markets["kucoin"].candle(ill, mm))
    assert aggregate(MINUTE, []) is None


def test_engine_far_behind_drops_the_backlog_unsent(monkeypatch):
    clock = {"now": MINUTE * MINUTE_MS}
    monkeypatch.setattr(engine_mod, "now_ms", lambda: clock["now"])
    sim = Sim(Config(symbols=30, rate=300, seed=2))
    eng, conn = sim.engine, FakeConn("kucoin")
    eng.add(conn, "all")
    t0 = MINUTE * MINUTE_MS
    for t in range(t0 + 50, t0 + 1000, 50):
        eng.step(t)
    sent_before = len(conn.frames)
    assert sent_before > 0 and eng.overload_skips == 0
    eng.step(t0 + 5000)                      # 4 s late: more than --max-lag
    assert eng.overload_skips == 1 and len(conn.frames) == sent_before
    eng.step(t0 + 5050)
    times = [json.loads(f)["data"]["time"] for f, _ in conn.frames[sent_before:]]
    assert times and min(times) >= t0 + 5000   # resumes at the present, nothing stale
    assert [e for e in sim.faults.log if e["fault"] == "overload_skip"]


def test_truth_files_are_written_and_pruned(tmp_path):
    from sim.truth import Truth
    old = tmp_path / "ticks-20000101-00.jsonl"
    old.write_text("[]\n")
    t = Truth(10, str(tmp_path), keep_hours=1)
    t.open_conn("k1", "kucoin", "/kucoin-ws/endpoint")
    sent = int(time.time() * 1000)
    t.add_many("k1", (("kucoin", "ticker:all", "BTC-USDT", sent - 7, 7, "62056.8"),), sent)
    t.close_conn("k1", "client_closed")
    assert t.flush_files() == 1
    assert not old.exists()
    (f,) = tmp_path.glob("ticks-*.jsonl")
    assert json.loads(f.read_text()) == ["kucoin", "k1", "ticker:all", "BTC-USDT", sent - 7, 7, "62056.8", sent, ""]
    events = [json.loads(x) for x in (tmp_path / "connections.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["open", "close"] and events[1]["close_reason"] == "client_closed"
