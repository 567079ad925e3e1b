"""The benchmark's pure measurement helpers: Prometheus text, snapshots -> commit times, slopes."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from cryptopipe.bench.measure import CommitClock, metric_sum, parse_prometheus, parse_snapshot, slope

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=timezone.utc)

PROM = """# HELP cryptopipe_consumer_written_total records made durable
# TYPE cryptopipe_consumer_written_total counter
cryptopipe_consumer_written_total{component="load",kind="ticks"} 1234.0
cryptopipe_consumer_written_total{component="load",kind="sessions"} 7.0
cryptopipe_extractor_ticks_total{exchange="kucoin"} 10.0
cryptopipe_extractor_ticks_total{exchange="binance"} 5.0
process_resident_memory_bytes 4.5e+07
"""


def test_prometheus_text_is_parsed_and_summed_by_labels():
    samples = parse_prometheus(PROM)
    assert metric_sum(samples, "cryptopipe_consumer_written_total", kind="ticks") == 1234.0
    assert metric_sum(samples, "cryptopipe_consumer_written_total") == 1241.0
    assert metric_sum(samples, "cryptopipe_extractor_ticks_total") == 15.0
    assert metric_sum(samples, "process_resident_memory_bytes") == 4.5e7
    assert metric_sum(samples, "cryptopipe_consumer_written_total", kind="nothing") == 0.0


def test_snapshot_text():
    assert parse_snapshot("100:105:101,103") == (100, 105, frozenset({101, 103}))
    assert parse_snapshot("7:7:") == (7, 7, frozenset())


def _clock(samples):
    clock = CommitClock()
    clock.samples = [(T0 + timedelta(milliseconds=20 * i), *parse_snapshot(s)) for i, s in enumerate(samples)]
    return clock


def test_commit_time_is_the_first_sample_without_the_transaction():
    clock = _clock(["100:101:100",        # 100 running
                    "100:103:100,102",    # 101 finished, 102 started and running
                    "102:104:102",        # 100 finished; 103 ran and finished in between
                    "104:104:"])          # 102 and 103 finished
    assert clock.committed_at(101) == T0 + timedelta(milliseconds=20)
    assert clock.committed_at(100) == T0 + timedelta(milliseconds=40)
    assert clock.committed_at(102) == T0 + timedelta(milliseconds=60)
    assert clock.committed_at(103) == T0 + timedelta(milliseconds=40)
    assert clock.committed_at(104) is None      # never seen finished
    assert clock.resolution_ms() == pytest.approx(20.0)


def test_slope_of_a_growing_and_a_flat_series():
    assert slope([(0, 0), (1, 10), (2, 20), (3, 30)]) == pytest.approx(10.0)
    assert slope([(0, 5), (1, 5), (2, 5)]) == pytest.approx(0.0)
    assert slope([(0, 1)]) is None


def test_step_rows_say_when_lag_grows_and_format_missing_values():
    from cryptopipe.bench.report import step_rows

    rows = dict(step_rows({"offered_ticks_per_s": 12000.4, "stored_ticks_per_s": 11000,
                           "latency": {"p50_ms": 10.2, "p95_ms": 40, "p99_ms": None},
                           "lag": {"load": {"max": 5, "inflow_records_per_s": 6.0, "growth_s_per_s": 0.05,
                                            "grows": True}},
                           "verdict": "not sustained: lag grew (load)"}))
    assert rows["offered ticks/s (received by the feed handlers)"] == "12,000"
    assert rows["receipt -> commit p50 / p95 / p99 ms"] == "10 / 40 / –"
    assert rows["verdict"] == "not sustained: lag grew (load)"
    assert rows["lag load: growth s/s (bound 0.01), max, inflow/s"] == "+0.0500 GROWS, 5, 6.0"
    assert dict(step_rows({}))["receipt -> commit p50 / p95 / p99 ms"] == "not measured (not kept up)"


def _sawtooth(n: int, period: int, amplitude: float, drift_per_s: float = 0.0) -> list[tuple[float, float]]:
    return [(float(t), amplitude * ((t % period) / period) + drift_per_s * t) for t in range(n)]


def test_a_batch_consumer_ripple_is_not_growth_and_a_one_percent_deficit_is():
    from cryptopipe.bench.measure import lag_verdict

    inflow = 100.0                                  # records/s into the group's topics
    flat = lag_verdict(_sawtooth(60, 3, 60.0), inflow)           # ripple of 0.6 s of feed
    assert not flat["grows"] and abs(flat["growth_s_per_s"]) < 0.01
    behind = lag_verdict(_sawtooth(60, 3, 60.0, drift_per_s=2.0), inflow)   # 2 % of the feed left behind
    assert behind["grows"] and behind["growth_s_per_s"] == pytest.approx(0.02, abs=0.003)
    assert behind["max"] > flat["max"] and behind["samples"] == 60


def test_noise_on_a_short_window_and_a_tiny_lag_is_not_growth():
    from cryptopipe.bench.measure import lag_verdict

    # 8 samples of a lag of 0..2 records: a trend of a record or so is the measure's own grain
    assert not lag_verdict([(0, 0), (1, 1), (2, 0), (3, 1), (4, 2), (5, 1), (6, 2), (7, 1)], 11.0)["grows"]
    assert not lag_verdict([(0, 0), (1, 0), (2, 0)], 0.0)["grows"]          # nothing flowed, nothing lags
    assert lag_verdict([(t, 10.0 * t) for t in range(10)], 0.0)["grows"]    # lag with no inflow at all


def test_trend_has_a_standard_error():
    from cryptopipe.bench.measure import trend

    b, se = trend([(0, 0), (1, 10), (2, 20), (3, 30)])
    assert b == pytest.approx(10.0) and se == pytest.approx(0.0)
    b, se = trend([(0, 0), (1, 2), (2, 0), (3, 2), (4, 0), (5, 2)])
    assert se > 0 and abs(b) < 2 * se


def test_rss_trend_tells_a_buffer_that_filled_from_memory_that_grows():
    from cryptopipe.bench.measure import rss_trend

    mb = 2**20
    filled = [(float(t), (100 + min(t, 20)) * mb) for t in range(60)]     # +20 MB in 20 s, then flat
    r = rss_trend(filled)
    assert r["peak_rss_mb"] == pytest.approx(120.0) and r["rss_first_mb"] < r["rss_last_mb"]
    assert r["rss_slope_mb_per_min"] > 5 and r["rss_slope_last_half_mb_per_min"] == pytest.approx(0.0)
    growing = rss_trend([(float(t), (100 + t) * mb) for t in range(60)])
    assert growing["rss_slope_last_half_mb_per_min"] == pytest.approx(60.0)
    assert rss_trend([])["peak_rss_mb"] is None


class _Recorder:
    def __init__(self, calls, name):
        self.calls, self.name = calls, name

    def start(self):
        self.calls.append(f"{self.name}.start")
        return self

    def stop(self):
        self.calls.append(f"{self.name}.stop")

    def mark_start(self):
        self.calls.append(f"{self.name}.mark_start")

    def mark_end(self):
        self.calls.append(f"{self.name}.mark_end")


def test_measure_window_opens_and_closes_the_marks_and_leaves_the_clock_running():
    from cryptopipe.bench.measure import measure_window

    calls, samples = [], []
    clock = _Recorder(calls, "clock")
    start, end = measure_window(clock, [_Recorder(calls, "p1"), _Recorder(calls, "p2")], _Recorder(calls, "infra"),
                                samples.append, 0.05, 0.01, lambda _msg: None, "t")
    assert calls == ["clock.start", "p1.mark_start", "p2.mark_start", "infra.mark_start",
                     "p1.mark_end", "p2.mark_end", "infra.mark_end"]      # the caller stops the clock
    assert samples and start < end and start.tzinfo is not None


def test_measure_window_stops_the_clock_when_the_window_fails():
    from cryptopipe.bench.measure import measure_window

    calls = []

    class Broken(_Recorder):
        def mark_end(self):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        measure_window(_Recorder(calls, "clock"), [Broken(calls, "p")], _Recorder(calls, "infra"),
                       lambda _now: None, 0.01, 0.01, lambda _msg: None, "t")
    assert calls[-1] == "clock.stop"
