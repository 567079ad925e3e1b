"""Cross-exchange validation end to end: the simulator makes KuCoin's BTC-USDT drift 300 bps away
from Binance's for two whole minutes (`SimControl.drift`); the pipeline stores both; the cross-check
records one divergence window covering the drift with the stored closes; /v1/health lists it and
the prices page marks the pair."""
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from tests.e2e.conftest import SCREENSHOTS
from tests.e2e.test_api_stream_truth import api_url, wait_api_streaming

pytestmark = pytest.mark.e2e
UTC = timezone.utc
SYMBOL = "BTC-USDT"
DRIFT_BPS = 300
DRIFT_S = 120
MIN_MINUTES = 2          # minutes in a row that make a divergence window


def test_a_drifting_exchange_is_found_by_the_cross_check_and_marked(live_pipeline, pg, page):
    import json
    import urllib.request

    h = live_pipeline
    h.wait_streaming(pg)
    wait_api_streaming()
    # start just after a minute begins: two whole minutes drift (the check below wants 2 in a row)
    time.sleep((60 - datetime.now(UTC).second + 1) % 60)
    answer = h.sim.drift("kucoin", SYMBOL, DRIFT_BPS, seconds=DRIFT_S)["drift"]
    started = datetime.fromtimestamp(answer["start_ms"] / 1000, UTC)
    time.sleep(DRIFT_S + 65)              # the drift, and the minute after it closes
    h.settle()
    first = started.replace(second=0, microsecond=0)
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    summary = check(first - timedelta(minutes=10), end)
    mine = [w for w in summary["windows"] if w["symbol"] == SYMBOL]
    assert len(mine) == 1, summary
    w = mine[0]
    # the whole minutes inside the drift diverge (its first and last minute may be partly drifted)
    assert datetime.fromisoformat(w["window_start"]) <= first + timedelta(minutes=1)
    assert datetime.fromisoformat(w["window_end"]) >= first + timedelta(seconds=DRIFT_S - 60)
    assert Decimal(w["max_bps"]) > 200
    with pg.cursor() as cur:
        cur.execute("SELECT exchange, close FROM candles_1m WHERE symbol = %s AND open_time = %s",
                    (SYMBOL, datetime.fromisoformat(w["max_at"])))
        closes = dict(cur.fetchall())
        cur.execute("SELECT count(*) FROM price_divergences WHERE symbol = %s AND window_start >= %s",
                    (SYMBOL, first - timedelta(minutes=10)))
        assert cur.fetchone()[0] == 1
    assert (Decimal(w["close_a"]), Decimal(w["close_b"])) == (closes["binance"], closes["kucoin"])
    check(first - timedelta(minutes=10), end)                  # a re-run adds nothing
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM price_divergences WHERE symbol = %s AND window_start >= %s",
                    (SYMBOL, first - timedelta(minutes=10)))
        assert cur.fetchone()[0] == 1

    time.sleep(1)            # the server's health snapshot cache
    with urllib.request.urlopen(f"http://{api_url()}/v1/health", timeout=30) as r:
        listed = [d for d in json.load(r)["divergences"] if d["symbol"] == SYMBOL]
    assert listed and listed[0]["max_bps"] == w["max_bps"]
    page.goto(f"http://{api_url()}/")
    badge = page.locator(f'tr[data-symbol="{SYMBOL}"] .badge')
    badge.wait_for(timeout=30_000)
    assert f"{Decimal(w['max_bps'])}" in badge.inner_text()
    page.locator("#filter").fill("USD")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "prices-page-divergence.png"))


def check(start, end) -> dict:
    from backfill.cross_check import cross_check
    from common.db import connect

    conn = connect()
    try:
        return cross_check(conn, start, end, 50, MIN_MINUTES)
    finally:
        conn.close()
