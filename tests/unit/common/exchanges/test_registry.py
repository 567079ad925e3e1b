"""The registry and the plug contract: every registered exchange fills the interface, its endpoint
settings exist with its live defaults, and it has an extractor program."""
from __future__ import annotations

import re

import pytest

from common.exchanges import EXCHANGES, PLUGS, Exchange, get_adapter, plug
from common.settings import REPO_ROOT, Settings
from common.topics import EXCHANGES as TOPIC_EXCHANGES

OVERRIDDEN = ("parse_ticks", "classify", "session", "plan_shards", "carried_symbols")


def test_names_come_from_the_registry():
    assert TOPIC_EXCHANGES == EXCHANGES == tuple(PLUGS) and len(EXCHANGES) >= 2
    assert all(PLUGS[name].name == name for name in EXCHANGES)
    assert plug("kucoin") is PLUGS["kucoin"]
    with pytest.raises(ValueError, match="unknown exchange 'kraken'"):
        plug("kraken")
    with pytest.raises(ValueError):
        get_adapter("kraken")


@pytest.mark.parametrize("name", EXCHANGES)
def test_each_plug_fills_the_interface(name):
    p = plug(name)
    assert issubclass(p, Exchange)
    missing = [m for m in OVERRIDDEN if getattr(p, m) is getattr(Exchange, m)]
    assert not missing, f"{name} does not implement {missing}"
    assert p.CCXT_ID and p.CANDLES_PER_REQUEST > 0 and p.PUSH_INTERVAL_MS > 0 and p.MAX_PER_CONNECTION > 0
    assert {"ohlcv", "markets"} <= set(p.REST_LIMITS.weights) and p.REST_LIMITS.server_limit > 0
    assert sorted(p.CANDLE_COLUMNS) == [1, 2, 3, 4, 5]
    assert all(h == h.lower() for h in p.RATE_HEADERS)


@pytest.mark.parametrize("name", EXCHANGES)
def test_endpoint_settings_exist_with_the_live_defaults(name):
    p = plug(name)
    fields = Settings.model_fields
    assert fields[p.REST_URL_SETTING].default == p.LIVE_REST_URL
    if p.WS_URL_SETTING is not None:
        assert fields[p.WS_URL_SETTING].default == p.LIVE_WS_URL
    assert set(p.url_settings()) <= set(fields)


def test_extractor_programs_and_metrics_ports():
    conf = (REPO_ROOT / "streaming" / "supervisord.conf").read_text()
    programs = re.findall(r"^\[program:extract-([a-z0-9]+)\]", conf, re.M)
    assert sorted(programs) == sorted(EXCHANGES)
    ports = [plug(name).EXTRACTOR_METRICS_PORT for name in EXCHANGES]
    # unique, and clear of transform/load/archive (9103-9105)
    assert len(set(ports)) == len(ports) and not set(ports) & {9103, 9104, 9105}


def test_one_symbol_map_builder_for_ccxt_markets():
    markets = {"BTC/USDT": {"id": "BTCUSDT", "base": "BTC", "quote": "USDT", "spot": True, "active": True},
               "OLD/BTC": {"id": "OLDBTC", "base": "OLD", "quote": "BTC", "spot": True, "active": False},
               "BTC/USDT:USDT": {"id": "BTCUSDT_PERP", "base": "BTC", "quote": "USDT", "spot": False},
               "E'V/IL": {"id": "EVIL", "base": "E'V", "quote": "IL", "spot": True},
               "NONE": {"id": "X", "base": None, "quote": "BTC", "spot": True}}
    for name in EXCHANGES:
        assert plug(name).symbol_map(markets) == {"BTCUSDT": "BTC-USDT"}
