"""The operators' health view is an Airflow plugin behind Airflow's login: anonymous and forged
requests are refused; a logged-in user gets the page and numbers equal to the database's; the
view is registered in the UI's navigation; and the cross-check DAG runs through Airflow."""
import json
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from tests.integration.airflow.airflow_api import AirflowApi

pytestmark = [pytest.mark.integration, pytest.mark.airflow]
UTC = timezone.utc


def fetch(url: str, token: str | None = None, cookie: str | None = None) -> tuple[int, bytes]:
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = f"_token={cookie}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def api(airflow_stack):
    return AirflowApi(airflow_stack["url"], airflow_stack["user"], airflow_stack["password"])


def test_anonymous_and_forged_requests_are_refused(airflow_stack):
    base = airflow_stack["url"] + "/cryptopipe/health/"
    for path in ("", "data", "health.js"):
        status, body = fetch(base + path)
        assert status == 401, (path, status, body[:200])
        assert b"exchanges" not in body
    forged = "eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJl"
    assert fetch(base + "data", token=forged)[0] in (401, 403)
    assert fetch(base + "data", cookie=forged)[0] in (401, 403)


def test_a_logged_in_user_sees_the_database_figures(airflow_stack, api, clean_db):
    now = datetime.now(UTC)
    with clean_db.cursor() as cur:
        cur.execute("""INSERT INTO stream_sessions (conn_id, exchange, connected_at, subscribed_at, last_seen_at)
                       VALUES ('hv1', 'kucoin', %s, %s, %s)""", (now - timedelta(minutes=5),) * 2 + (now,))
        cur.execute("""INSERT INTO gaps (exchange, symbol, gap_start, gap_end, status)
                       VALUES ('binance', NULL, %s, %s, 'failed')""", (now - timedelta(hours=2), now - timedelta(hours=1)))
        cur.execute("""INSERT INTO price_divergences (symbol, exchange_a, exchange_b, window_start, window_end, minutes,
                                                      max_bps, max_at, close_a, close_b, threshold_bps)
                       VALUES ('BTC-USDT', 'binance', 'kucoin', %s, %s, 3, 75.25, %s, 100, 100.75, 50)""",
                    (now - timedelta(minutes=9), now - timedelta(minutes=6), now - timedelta(minutes=8)))
        cur.execute("""INSERT INTO supervisor_checks (checked_at, program, state, verdict, reason)
                       VALUES (now(), 'transform', 'RUNNING', 'healthy', 'running and making progress')""")
    base = airflow_stack["url"] + "/cryptopipe/health/"
    status, page = fetch(base, token=api.token)
    assert status == 200 and b"pipeline health" in page
    status, body = fetch(base + "data", cookie=api.token)         # the UI's session cookie works too
    assert status == 200, body[:300]
    data = json.loads(body)
    assert data["exchanges"]["kucoin"]["sessions"]["connected_now"] == 1
    assert data["exchanges"]["binance"]["sessions"]["connected_now"] == 0
    assert data["exchanges"]["binance"]["gaps"]["failed"] == {"gaps": 1, "minutes": 60}
    assert [(d["symbol"], Decimal(d["max_bps"])) for d in data["divergences"]] == [("BTC-USDT", Decimal("75.25"))]
    assert [c["program"] for c in data["supervisor_checks"]["latest"]] == ["transform"]
    groups = {(g["group"], g["topic"]) for g in data["consumer_lag"]["groups"]}
    assert ("loader", "binance_transformed_data") in groups and ("transformer", "kucoin_raw_data") in groups
    assert set(data["coverage"]) == {"binance", "kucoin"}


def test_the_view_is_in_the_ui_navigation(api):
    status, plugins = api.call("GET", "/plugins")
    assert status == 200, plugins
    ours = [p for p in plugins["plugins"] if p["name"] == "cryptopipe"]
    assert ours, plugins
    views = ours[0]["external_views"]
    assert [(v["name"], v["href"], v["destination"], v["url_route"]) for v in views] == [
        ("Pipeline health", "cryptopipe/health/", "nav", "pipeline-health")]
    assert any(a["name"] == "cryptopipe health view" and a["url_prefix"] == "/cryptopipe"
               for a in ours[0]["fastapi_apps"])


def test_cross_check_dag_runs_through_airflow(api, clean_db):
    t0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)
    with clean_db.cursor() as cur:
        for m in range(10):
            for ex, close in (("binance", Decimal("10")), ("kucoin", Decimal("10.2") if 2 <= m <= 6 else Decimal("10"))):
                cur.execute("""INSERT INTO candles_1m (exchange, symbol, open_time, open, high, low, close, volume,
                                                       source) VALUES (%s,'XRP-USDT',%s,%s,%s,%s,%s,1,'rest')""",
                            (ex, t0 + timedelta(minutes=m), close, close, close, close))
    was_paused = api.ready("crypto_cross_check")
    try:
        status, run = api.trigger("crypto_cross_check", {"hours": 1, "lookback_hours": 0})
        assert status == 200, run
        assert api.wait_run("crypto_cross_check", run["dag_run_id"])["state"] == "success"
    finally:
        api.set_paused("crypto_cross_check", was_paused)
    with clean_db.cursor() as cur:
        cur.execute("SELECT symbol, window_start, window_end, max_bps FROM price_divergences")
        assert cur.fetchall() == [("XRP-USDT", t0 + timedelta(minutes=2), t0 + timedelta(minutes=7), Decimal("198.02"))]
