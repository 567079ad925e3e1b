"""The market is a pure function of the seed (and of its drift schedule); REST rows aggregate its trades."""
from decimal import ROUND_HALF_UP, Decimal

import pytest

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


def scaled(price: int, bps) -> int:
    """The drift rule in Decimal arithmetic: round half up to the symbol's tick, at least one tick."""
    v = (Decimal(price) * (1 + Decimal(str(bps)) / 10_000)).quantize(Decimal(1), ROUND_HALF_UP)
    return max(1, int(v))


def test_drift_scales_prices_from_its_start_and_keeps_history():
    u = build_universe(4, 30)
    m, twin = Market("kucoin", 4, u, 300), Market("kucoin", 4, u, 300)
    s = u[0]
    t0 = MINUTE * MINUTE_MS
    before = m.candle(s, MINUTE)                       # cached before the drift is set
    assert m.candle(s, MINUTE + 1) == twin.candle(s, MINUTE + 1)
    start = t0 + 30_000
    m.set_drift(s, 33.3, start, start + 60_000)
    raw = twin.minute_trades(s, MINUTE) + twin.minute_trades(s, MINUTE + 1) + twin.minute_trades(s, MINUTE + 2)
    got = m.minute_trades(s, MINUTE) + m.minute_trades(s, MINUTE + 1) + m.minute_trades(s, MINUTE + 2)
    assert [(t, q, seq) for t, _, q, seq in got] == [(t, q, seq) for t, _, q, seq in raw]   # only prices move
    inside = 0
    for (t, p, _, _), (_, p0, _, _) in zip(got, raw):
        if start <= t < start + 60_000:
            assert p == scaled(p0, 33.3)
            inside += 1
        else:
            assert p == p0
    assert inside > 100
    # the cache held the whole minute from before the drift: it must not be served stale
    assert m.candle(s, MINUTE) != before and m.candle(s, MINUTE + 1) == aggregate(MINUTE + 1, m.minute_trades(s, MINUTE + 1))
    assert m.candle(s, MINUTE + 3) == twin.candle(s, MINUTE + 3)        # after the period
    raw_stream = m.trade_stream(s, MINUTE + 1, raw=True)
    assert [next(raw_stream) for _ in range(5)] == twin.minute_trades(s, MINUTE + 1)[:5]


def test_drift_ends_at_the_next_drift_or_when_ended_and_never_rewrites_the_past():
    u = build_universe(4, 30)
    m, twin = Market("binance", 4, u, 300), Market("binance", 4, u, 300)
    s = u[1]
    t0 = MINUTE * MINUTE_MS
    m.set_drift(s, 100, t0 + 10_000)
    m.set_drift(s, -50, t0 + 20_000)                   # replaces the running one from its start
    ended = m.end_drifts(t0 + 40_000)
    assert [(x.canonical, p[:3]) for x, p in ended] == [(s.canonical, [t0 + 20_000, t0 + 40_000, -50])]
    assert m.end_drifts(t0 + 50_000) == []
    assert [p[:3] for p in m.drifts[s.idx]] == [[t0 + 10_000, t0 + 20_000, 100], [t0 + 20_000, t0 + 40_000, -50]]
    for (t, p, _, _), (_, p0, _, _) in zip(m.minute_trades(s, MINUTE), twin.minute_trades(s, MINUTE)):
        want = scaled(p0, 100) if t0 + 10_000 <= t < t0 + 20_000 else scaled(p0, -50) if t < t0 + 40_000 and \
            t >= t0 + 20_000 else p0
        assert p == want
    m.set_drift(s, 0, t0 + 60_000)                     # bps 0 with nothing running: nothing to add
    assert len(m.drifts[s.idx]) == 2


@pytest.mark.parametrize("bps", [-10_000, -20_000, 100_001, "nan", "inf", "x"])
def test_drift_refuses_impossible_sizes(bps):
    u = build_universe(4, 10)
    with pytest.raises(ValueError):
        Market("kucoin", 4, u, 10).set_drift(u[0], bps, 0)


def test_drifted_prices_stay_positive_and_on_the_tick():
    u = build_universe(4, 10)
    m = Market("kucoin", 4, u, 10)
    m.set_drift(u[0], "-9999.99", 0)
    assert m.drifted_price(0, 5, 1) == 1 and m.drifted_price(0, 5, 10 ** 9) == 1000
    m.set_drift(u[0], 0.5, 10)                          # 1.00005 x: 10001 ticks -> 10001.50005 -> 10002
    assert m.drifted_price(0, 10, 10_001) == 10_002 and m.drifted_price(0, 9, 10_001) == 1
