"""crypto_backfill triggered through Airflow's REST API on the stack's Airflow, the way the UI does
it: bad types are refused with HTTP 400 and a readable detail; a well-typed but impossible request
becomes a run whose `validate` task fails with a sentence that says why."""
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.airflow]
UTC = timezone.utc


class AirflowApi:
    def __init__(self, url: str, user: str, password: str):
        self.url = url.rstrip("/")
        body = json.dumps({"username": user, "password": password}).encode()
        req = urllib.request.Request(f"{self.url}/auth/token", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            self.token = json.load(r)["access_token"]

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(f"{self.url}/api/v2{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def trigger(self, dag_id: str, conf: dict) -> tuple[int, dict]:
        return self.call("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status, run = self.call("GET", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")
            assert status == 200, run
            if run["state"] in ("success", "failed") or time.monotonic() > deadline:
                return run
            time.sleep(2)

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        q = urllib.parse.quote(run_id, safe="")
        status, body = self.call("GET", f"/dags/{dag_id}/dagRuns/{q}/taskInstances/{task_id}/logs/{try_number}"
                                        "?full_content=true")
        assert status == 200, body
        return json.dumps(body.get("content"))


@pytest.fixture(scope="module")
def api(airflow_stack):
    api = AirflowApi(airflow_stack["url"], airflow_stack["user"], airflow_stack["password"])
    # the dag-processor may still be parsing a fresh checkout
    deadline = time.monotonic() + 120
    while api.call("GET", "/dags/crypto_backfill")[0] != 200:
        assert time.monotonic() < deadline, "crypto_backfill never appeared in Airflow"
        time.sleep(2)
    status, dag = api.call("PATCH", "/dags/crypto_backfill", {"is_paused": False})
    assert status == 200, dag
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
