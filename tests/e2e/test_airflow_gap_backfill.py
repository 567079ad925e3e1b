"""The outage scenario driven through Airflow: the simulator refuses websocket connections for
minutes; crypto_gap_detection (triggered through the REST API) records the hole; crypto_backfill
runs triggered through the REST API, the way the UI does it, fill it; every gap is `filled`;
then crypto_reconcile runs (triggered the same way), and every minute of the window, outage
edges included, for every trading symbol of both exchanges, is in candles_1m with the
simulator's true candle."""
import time
from datetime import datetime, timedelta, timezone

import pytest

from backfill.validation import ceil_minute
from tests.integration.airflow.airflow_api import AirflowApi
from tests.plugins.pipeline import Figures, now_ms

pytestmark = [pytest.mark.e2e, pytest.mark.airflow]
UTC = timezone.utc


def test_outage_found_by_airflow_and_filled_by_rest_triggered_backfills(live_pipeline, airflow_stack, pg):
    from plugins.backfill_tasks import backfill_triggers

    h = live_pipeline
    api = AirflowApi(airflow_stack["url"], airflow_stack["user"], airflow_stack["password"])
    # scheduled runs of crypto_gap_detection may also trigger backfills meanwhile: harmless
    # (claims are atomic, writes idempotent); the check below waits for every backfill run
    was_paused = {dag_id: api.ready(dag_id) for dag_id in ("crypto_gap_detection", "crypto_backfill",
                                                           "crypto_reconcile")}
    try:
        t0 = now_ms()
        time.sleep(5)
        h.sim.outage(150)            # both exchanges refuse websocket connections for 2.5 minutes
        time.sleep(150)              # the outage
        h.wait_streaming(pg)         # the extractors reconnect and stream again
        t1 = now_ms()
        h.settle()
        time.sleep(6)                # past the detection's settle time

        # detection only (max_backfills 0): the backfills are triggered below through the REST API
        status, run = api.trigger("crypto_gap_detection", {"lookback_hours": 1, "settle_seconds": 5,
                                                           "max_backfills": 0})
        assert status == 200, run
        assert api.wait_run("crypto_gap_detection", run["dag_run_id"])["state"] == "success"
        lo = datetime.fromtimestamp(t0 / 1000, UTC) - timedelta(minutes=1)
        with pg.cursor() as cur:
            cur.execute("SELECT count(*) FROM gaps WHERE gap_end > %s AND kind LIKE %s", (lo, "%uncovered%"))
            assert cur.fetchone()[0] >= 1, "crypto_gap_detection recorded no gap for the outage"

        runs = []
        for trigger in backfill_triggers(100, "e2e"):
            status, created = api.trigger("crypto_backfill", trigger["conf"])
            assert status == 200, created
            runs.append(created["dag_run_id"])
        assert runs
        states = {r: api.wait_run("crypto_backfill", r, timeout=600)["state"] for r in runs}
        assert set(states.values()) == {"success"}, states
        api.wait_idle("crypto_backfill")

        # reconciliation through Airflow: runs (one at a time) until both exchanges are past t1
        need = ceil_minute(datetime.fromtimestamp(t1 / 1000, UTC))
        reconcile_runs = 0
        while h.reconciled() < need:
            assert reconcile_runs < 4, f"crypto_reconcile reached only {h.reconciled()}, {need} wanted"
            wait = (need + timedelta(seconds=5) - datetime.now(UTC)).total_seconds()
            if wait > 0:
                time.sleep(wait)
            status, run = api.trigger("crypto_reconcile", {"settle_seconds": 5})
            assert status == 200, run
            assert api.wait_run("crypto_reconcile", run["dag_run_id"], timeout=600)["state"] == "success"
            reconcile_runs += 1

    finally:
        for dag_id, paused in was_paused.items():
            api.set_paused(dag_id, paused)

    # gaps of this simulated market (others' tests may leave gaps of symbols it does not list)
    listed = {ex: set(h.trading_symbols(ex)) for ex in ("binance", "kucoin")}
    with pg.cursor() as cur:
        cur.execute("SELECT id, exchange, symbol, gap_start, gap_end, status, error FROM gaps "
                    "WHERE gap_end > %s AND status <> 'filled'", (lo,))
        unfilled = [r for r in cur.fetchall() if r[2] is None or r[2] in listed[r[1]]]
    assert unfilled == []
    fig = Figures("airflow_outage_150s")
    fig.add(backfill_runs=len(runs), reconcile_runs=reconcile_runs)
    h.reconciled_until = h.reconciled()
    h.check_candles(pg, t0, t1, fig)
    fig.print()
    assert h.all_running() == {}
