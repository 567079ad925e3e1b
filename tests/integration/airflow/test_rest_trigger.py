"""crypto_backfill triggered through Airflow's REST API on the stack's Airflow, the way the UI does
it: bad types are refused with HTTP 400 and a readable detail; a well-typed but impossible request
becomes a run whose `validate` task fails with a sentence that says why."""
from datetime import datetime, timedelta, timezone

import pytest

from tests.integration.airflow.airflow_api import AirflowApi

pytestmark = [pytest.mark.integration, pytest.mark.airflow]
UTC = timezone.utc


@pytest.fixture(scope="module")
def api(airflow_stack):
    api = AirflowApi(airflow_stack["url"], airflow_stack["user"], airflow_stack["password"])
    api.ready("crypto_backfill")
    return api


@pytest.mark.parametrize("conf, detail", [
    ({"exchange": "bitfinex", "start": "2026-11-25T08:00:00Z", "end": "2026-11-25T09:00:00Z"},
     "Invalid input for param exchange: 'bitfinex' is not one of ['binance', 'kucoin']"),
    ({"exchange": "binance", "symbols": "BTC-USDT", "start": "2026-11-25T08:00:00Z", "end": "2026-11-25T09:00:00Z"},
     "Invalid input for param symbols: 'BTC-USDT' is not of type 'array'"),
    ({"exchange": "binance", "start": "2026-11-25T08:00:00Z"}, "Invalid input for param end: No value passed"),
])
def test_rest_trigger_refuses_badly_typed_params(api, conf, detail):
    status, body = api.trigger("crypto_backfill", conf)
    assert status == 400
    assert body["detail"].startswith(detail)


def test_rest_trigger_of_an_impossible_window_fails_validate_readably(api):
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start, end = now - timedelta(hours=1), now - timedelta(hours=3)
    status, run = api.trigger("crypto_backfill", {"exchange": "kucoin", "symbols": ["BTC-USDT"],
                                                  "start": start.isoformat(), "end": end.isoformat()})
    assert status == 200, run
    done = api.wait_run("crypto_backfill", run["dag_run_id"])
    assert done["state"] == "failed"
    log = api.task_log("crypto_backfill", run["dag_run_id"], "validate")
    assert (f"invalid backfill parameters: end ({end:%Y-%m-%d %H:%M} UTC) must be after start "
            f"({start:%Y-%m-%d %H:%M} UTC)") in log


def test_a_failed_manual_trigger_leaves_the_gaps_it_named_repairable(api, pg):
    """A person's bad parameters fail the run with its message; the gaps named in its conf stay
    open (not failed, not permanent), so the next detection run still plans their repair."""
    from plugins.backfill_tasks import backfill_triggers

    now = datetime.now(UTC).replace(second=0, microsecond=0)
    gap_start, gap_end = now - timedelta(days=3, hours=2), now - timedelta(days=3, hours=1)
    with pg.cursor() as cur:
        cur.execute("DELETE FROM gaps WHERE exchange = 'kucoin' AND symbol = 'BTC-USDT' AND gap_start = %s", (gap_start,))
        cur.execute("INSERT INTO gaps (exchange, symbol, gap_start, gap_end, status, kind) "
                    "VALUES ('kucoin', 'BTC-USDT', %s, %s, 'open', 'manual') RETURNING id", (gap_start, gap_end))
        gap_id = cur.fetchone()[0]
    try:
        status, run = api.trigger("crypto_backfill", {"exchange": "kucoin", "symbols": ["BTC-USDT"],
                                                      "start": gap_end.isoformat(), "end": gap_start.isoformat(),
                                                      "gap_ids": [gap_id]})
        assert status == 200, run
        done = api.wait_run("crypto_backfill", run["dag_run_id"])
        assert done["state"] == "failed"
        assert "invalid backfill parameters: end" in api.task_log("crypto_backfill", run["dag_run_id"], "validate")
        with pg.cursor() as cur:
            cur.execute("SELECT status, attempts, permanent, error FROM gaps WHERE id = %s", (gap_id,))
            assert cur.fetchone() == ("open", 0, False, None)
        planned = backfill_triggers(1000, "test", now=now, known_symbols={"BTC-USDT"})
        assert any(gap_id in r["conf"]["gap_ids"] for r in planned), planned
    finally:
        with pg.cursor() as cur:
            cur.execute("DELETE FROM gaps WHERE id = %s", (gap_id,))
