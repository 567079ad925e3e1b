"""The Prometheus collector of candle_checks: what it exports, that it reads at most once per
ttl, and that a database it cannot read gives `up 0` instead of a failed scrape."""
from datetime import datetime, timezone
from decimal import Decimal as D

from prometheus_client import CollectorRegistry

from common.candle_checks import CandleChecksCollector

UTC = timezone.utc
ROWS = [
    {"exchange": "binance", "reconciled_until": datetime(2030, 1, 1, 12, 5, tzinfo=UTC), "state_updated_at": None,
     "last_minute": datetime(2030, 1, 1, 12, 4, tzinfo=UTC), "window_minutes": 60, "minutes": 60, "compared": 400,
     "differing": 100, "missing": 3,
     "max_rel_diff": {"open": D("0.0012"), "high": D("0"), "low": D("0.5"), "close": D("0.0031"), "volume": None}},
    {"exchange": "kucoin", "reconciled_until": None, "state_updated_at": None, "last_minute": None,
     "window_minutes": 60, "minutes": 0, "compared": 0, "differing": 0, "missing": 0,
     "max_rel_diff": dict.fromkeys(("open", "high", "low", "close", "volume"))},
]


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def registry_with(read, clock):
    reg = CollectorRegistry()
    reg.register(CandleChecksCollector(read, ttl_s=30, clock=clock))
    return reg


def test_exports_the_newest_figures_per_exchange():
    reg = registry_with(lambda: ROWS, Clock())
    v = lambda name, **labels: reg.get_sample_value(name, labels)  # noqa: E731
    assert v("cryptopipe_candle_checks_up") == 1
    assert v("cryptopipe_reconciled_until_timestamp_seconds", exchange="binance") == \
        datetime(2030, 1, 1, 12, 5, tzinfo=UTC).timestamp()
    assert v("cryptopipe_stream_candles_compared", exchange="binance") == 400
    assert v("cryptopipe_stream_candles_differing", exchange="binance") == 100
    assert v("cryptopipe_stream_candles_missing", exchange="binance") == 3
    assert v("cryptopipe_stream_candles_differing_ratio", exchange="binance") == 0.25
    assert v("cryptopipe_stream_candle_max_relative_difference", exchange="binance", field="close") == 0.0031
    assert v("cryptopipe_stream_candle_max_relative_difference", exchange="binance", field="high") == 0
    # unknown stays absent instead of pretending to be 0
    assert v("cryptopipe_stream_candle_max_relative_difference", exchange="binance", field="volume") is None
    assert v("cryptopipe_stream_candles_compared", exchange="kucoin") is None
    assert v("cryptopipe_reconciled_until_timestamp_seconds", exchange="kucoin") is None


def test_reads_postgres_at_most_once_per_ttl_and_never_at_registration():
    calls = []
    clock = Clock()

    def read():
        calls.append(clock.t)
        return ROWS

    reg = registry_with(read, clock)
    assert calls == []                       # registering describes, it does not read
    for t in (0, 10, 29.9):
        clock.t = t
        assert reg.get_sample_value("cryptopipe_stream_candles_compared", {"exchange": "binance"}) == 400
    assert calls == [0]
    clock.t = 30
    reg.get_sample_value("cryptopipe_candle_checks_up")
    assert calls == [0, 30]


def test_an_unreadable_database_is_up_0_not_a_failed_scrape():
    state = {"fail": True}
    clock = Clock()

    def read():
        if state["fail"]:
            raise ConnectionError("connection refused")
        return ROWS

    reg = registry_with(read, clock)
    assert reg.get_sample_value("cryptopipe_candle_checks_up") == 0
    assert reg.get_sample_value("cryptopipe_stream_candles_compared", {"exchange": "binance"}) is None
    state["fail"] = False
    clock.t = 31
    assert reg.get_sample_value("cryptopipe_candle_checks_up") == 1
