"""The benchmark's feed planner (simulator settings for a tick rate, from the simulator's own
market model), its search for the maximum, and its flags."""
from __future__ import annotations

import pytest

from cryptopipe.bench.feed import expected, plan
from cryptopipe.bench.ramp import search_max


@pytest.mark.parametrize("ticks", [1000, 10_000, 40_000])
def test_the_plan_offers_the_rate_asked_for(ticks):
    p = plan(ticks)
    assert p.ticks_per_s == pytest.approx(ticks, rel=0.001)
    assert p.symbols == pytest.approx(ticks / 3, abs=1)
    # tickers sample trades: every tick is a trade, and Binance's once-a-second ticker samples more
    assert p.trades_per_s > p.ticks_per_s
    assert p.by_exchange["kucoin"] > p.by_exchange["binance"] > 0


def test_each_symbol_offers_at_most_its_tickers_push_rate():
    # KuCoin pushes a symbol at most every 100 ms, Binance every second: 11 ticks/s per symbol
    busy = expected(100, 10**6)
    assert busy.ticks_per_s <= 100 * 11
    capped = plan(5000, symbols=100)
    assert capped.ticks_per_s < 5000 and capped.symbols == 100


def test_the_plan_matches_what_the_simulator_sent_in_a_measured_run():
    # `python -m sim.bench --scenario both --symbols 4000 --rate 40000`, 2026-12-05: the clients
    # received 21,948 KuCoin and 3,100 Binance ticks/s (one overload skip on a busy machine)
    p = expected(4000, 40_000)
    assert p.by_exchange["kucoin"] == pytest.approx(21_948, rel=0.05)
    assert p.by_exchange["binance"] == pytest.approx(3_100, rel=0.12)


def _steps(capacity: float):
    runs = []

    def step(rate: float) -> dict:
        runs.append(rate)
        ok = rate <= capacity
        return {"target_ticks_per_s": rate, "offered_ticks_per_s": rate, "stored_ticks_per_s": rate if ok else capacity,
                "kept_up": ok, "sustained": ok, "verdict": "sustained" if ok else "not sustained: lag grew (load)",
                "lag": {"load": {"growth_s_per_s": 0.0 if ok else 0.1}}}
    return step, runs


def test_the_search_steps_up_then_bisects_between_the_last_pass_and_the_first_fail():
    step, runs = _steps(capacity=12_000)
    out = search_max(step, 5000, lambda _m: None)
    assert runs == [5000, 7500, 11250, 16875, 14062.5, 12656.25]
    assert out["max"]["target_ticks_per_s"] == 11250
    assert out["first_failed"]["target_ticks_per_s"] == 12656.25
    assert [s["kept_up"] for s in out["steps"]] == [True, True, True, False, False, False]
    assert out["steps"][3]["worst_lag"] == "load"


def test_the_search_goes_down_when_the_first_step_fails_and_honours_its_limits():
    step, runs = _steps(capacity=1500)
    out = search_max(step, 5000, lambda _m: None)
    assert runs[:3] == [5000, 2500, 1250] and out["max"]["target_ticks_per_s"] >= 1250
    step, runs = _steps(capacity=10**9)
    out = search_max(step, 1000, lambda _m: None, max_steps=4)
    assert len(runs) == 4 and out["first_failed"] is None
    step, runs = _steps(capacity=3000)
    out = search_max(step, 1000, lambda _m: None, steps=[2000, 4000, 8000], bisections=1)
    assert runs == [2000, 4000, 3000] and out["max"]["target_ticks_per_s"] == 3000


def test_tuned_flags_are_parsed_named_and_refused_when_unknown():
    from cryptopipe.bench import parse_tuning

    t = parse_tuning("--poll-timeout 0.05 --load-workers 2")
    assert t.poll_timeout == 0.05 and t.load_workers == 2 and t.batch_size is None
    assert t.describe() == "--poll-timeout 0.05 --load-workers 2"
    assert parse_tuning("").describe() == "shipped defaults"
    with pytest.raises(SystemExit, match="--tuned"):
        parse_tuning("--no-such-flag 1")
    # RF 3 vs RF 1 (on a KAFKA_BROKERS=3 stack) in one run
    assert parse_tuning("--replication 3").replication == 3
    assert parse_tuning("--replication 3").describe() == "--replication 3"
    with pytest.raises(SystemExit, match="--tuned"):
        parse_tuning("--replication 2")


class _Probe:
    """A lag probe replaying (lag, high watermark sum) samples."""

    def __init__(self, samples):
        self.samples = list(samples)

    def sample(self):
        return self.samples.pop(0) if len(self.samples) > 1 else self.samples[0]


def test_the_window_waits_for_the_startup_backlog_to_clear(monkeypatch):
    from cryptopipe.bench import ours

    now = [0.0]
    monkeypatch.setattr(ours.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(ours.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    # 50 records/s flow in (100 per 2-s sample); the transformer's lag falls from 1,000 to 90
    # records (1.8 s of feed)
    transform = _Probe([(1000, 0), (600, 100), (90, 200)])
    load = _Probe([(0, 0)])
    waited, settled = ours._settle({"transform": transform, "load": load}, timeout=60)
    assert settled and waited == 4.0
    stuck = _Probe([(1000 + 50 * i, 100 * i) for i in range(100)])
    waited, settled = ours._settle({"transform": stuck, "load": _Probe([(0, 0)])}, timeout=20)
    assert not settled and waited >= 20
