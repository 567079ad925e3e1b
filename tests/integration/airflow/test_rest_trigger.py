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
