"""sim.bench runs end to end and reports its figures (the figures themselves are not asserted)."""
from sim.bench import measure


def test_bench_reports_figures():
    r = measure(scenario="both", symbols=50, rate=500, seconds=1.5, warmup=1, trade_streams=5)
    for key in ("sim_ticks_out_per_s", "client_ticks_per_s", "sim_cpu_cores", "sim_ticks_per_cpu_second", "sim_rss_mb"):
        assert key in r
    assert r["client_ticks_per_s_by_exchange"]["kucoin"] > 0 and r["client_ticks_per_s_by_exchange"]["binance"] > 0
    assert r["clients_ended_early"] == []
