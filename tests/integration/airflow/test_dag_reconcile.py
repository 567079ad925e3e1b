"""crypto_reconcile: the stack's Airflow parses it with its schedule and one run at a time, and a
`dag.test()` run against the simulator (ccxt REST) and the real Postgres and S3 replaces the
stream's candles of the closed minutes by the exchange's and records how far they were; with
RECONCILE=off its tasks skip and change nothing."""
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from tests.integration.airflow.airflow_api import AirflowApi
from tests.integration.airflow.test_dag_backfill import stored_candles as stored, true_candles

pytestmark = pytest.mark.integration
UTC = timezone.utc
M = timedelta(minutes=1)
EXCHANGES = ("binance", "kucoin")


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


@pytest.fixture
def stream_world(sim_factory, pg):
    """A simulator, two of its liquid symbols (SYMBOLS), their stream candles (no volume) of the
    last 6 minutes on both exchanges with one close 1 % off per exchange, and reconcile_state at
    the first of those minutes; every row is removed and the state restored afterwards."""
    sim = sim_factory(symbols=5)
    symbols = [s["symbol"] for s in sim.control.symbols("kucoin") if not s["illiquid"]][-2:]
    start = datetime.now(UTC).replace(second=0, microsecond=0) - 6 * M
    end = start + 6 * M
    with pg.cursor() as cur:
        cur.execute("SELECT exchange, reconciled_until, started_at, updated_at, last_run::text FROM reconcile_state")
        saved = cur.fetchall()
        bad = {}
        for exchange in EXCHANGES:
            cur.execute("DELETE FROM reconcile_state WHERE exchange = %s", (exchange,))
            cur.execute("INSERT INTO reconcile_state (exchange, reconciled_until, started_at) VALUES (%s, %s, %s)",
                        (exchange, start, start))
            for symbol in symbols:
                for c in sim.control.candles(exchange, symbol, ms(start), ms(end) - 1):
                    t = datetime.fromtimestamp(c["open_ms"] / 1000, UTC)
                    if Decimal(c["volume"]) == 0 or t >= end:
                        continue
                    close = Decimal(c["close"])
                    if exchange not in bad:
                        bad[exchange] = t
                        close *= Decimal("1.01")
                    cur.execute("""INSERT INTO candles_1m (exchange, symbol, open_time, open, high, low, close, source)
                                   VALUES (%s, %s, %s, %s, %s, %s, %s, 'stream')
                                   ON CONFLICT (exchange, symbol, open_time) DO UPDATE SET open = EXCLUDED.open,
                                       high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
                                       volume = NULL, source = 'stream', confirmed_empty = false""",
                                (exchange, symbol, t, c["open"], c["high"], c["low"], close))
            cur.execute("DELETE FROM candle_checks WHERE exchange = %s AND minute >= %s AND minute < %s",
                        (exchange, start, end))
            cur.execute("DELETE FROM backfill_chunks WHERE exchange = %s AND symbol = ANY(%s) AND chunk_end > %s",
                        (exchange, symbols, start))
    env = {k: sim.url(k) for k in ("BINANCE_REST_URL", "KUCOIN_REST_URL", "BINANCE_WS_URL")}
    env["SYMBOLS"] = ",".join(symbols)
    yield {"sim": sim, "symbols": symbols, "start": start, "end": end, "env": env, "bad": bad}
    with pg.cursor() as cur:
        for exchange in EXCHANGES:
            cur.execute("DELETE FROM candles_1m WHERE exchange = %s AND symbol = ANY(%s) AND open_time >= %s",
                        (exchange, symbols, start))
            cur.execute("DELETE FROM candle_checks WHERE exchange = %s AND minute >= %s", (exchange, start))
        cur.execute("DELETE FROM reconcile_state")
        for row in saved:
            cur.execute("INSERT INTO reconcile_state (exchange, reconciled_until, started_at, updated_at, last_run) "
                        "VALUES (%s, %s, %s, %s, %s::jsonb)", row)


def test_a_reconcile_run_makes_the_closed_minutes_the_exchanges_candles(stream_world, run_dag, pg):
    w = stream_world
    out = run_dag("crypto_reconcile", {"settle_seconds": 30}, env=w["env"])
    assert out["state"] == "success", out["stdout"][-5000:]
    assert out["tasks"] == {"reconcile[0]": "success", "reconcile[1]": "success"}
    for i, exchange in enumerate(EXCHANGES):
        result = out["xcom"][f"reconcile[{i}].return_value"]
        assert result["exchange"] == exchange and result["status"] == "done", result
        assert result["start"] == w["start"].isoformat() and result["symbols"] == 2
        until = datetime.fromisoformat(result["reconciled_until"])
        assert until >= w["end"] - M
        for symbol in w["symbols"]:
            assert stored(pg, exchange, symbol, w["start"], until) == \
                true_candles(w["sim"], exchange, symbol, w["start"], until)
        with pg.cursor() as cur:
            cur.execute("SELECT symbols_differing, max_close_rel_diff FROM candle_checks WHERE exchange = %s "
                        "AND minute = %s", (exchange, w["bad"][exchange]))
            assert cur.fetchone() == (1, Decimal("0.01"))
            cur.execute("SELECT reconciled_until FROM reconcile_state WHERE exchange = %s", (exchange,))
            assert cur.fetchone() == (until,)


def test_with_reconcile_off_the_tasks_skip_and_change_nothing(stream_world, run_dag, pg):
    w = stream_world
    out = run_dag("crypto_reconcile", {"settle_seconds": 30}, env={**w["env"], "RECONCILE": "off"})
    assert out["state"] == "success", out["stdout"][-5000:]
    assert out["tasks"] == {"reconcile[0]": "skipped", "reconcile[1]": "skipped"}
    assert "reconciliation is off (RECONCILE=off): skipped" in out["stdout"]
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM reconcile_state WHERE reconciled_until = %s", (w["start"],))
        assert cur.fetchone() == (2,)
    for exchange in EXCHANGES:
        assert {r[6] for r in stored(pg, exchange, w["symbols"][0], w["start"], w["end"])} == {"stream"}


def test_the_stacks_airflow_schedules_it_every_5_minutes_one_run_at_a_time(airflow_stack):
    api = AirflowApi(airflow_stack["url"], airflow_stack["user"], airflow_stack["password"])
    api.wait_parsed("crypto_reconcile")
    status, dag = api.call("GET", "/dags/crypto_reconcile/details")
    assert status == 200, dag
    assert dag["max_active_runs"] == 1 and dag["catchup"] is False
    assert "0:05:00" in str(dag.get("timetable_summary") or dag.get("timetable_description")), dag
    assert dag["is_paused"] is True           # the tests drive it; `make up` unpauses it
