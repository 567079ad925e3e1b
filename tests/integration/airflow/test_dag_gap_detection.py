"""`dag.test()` of crypto_gap_detection on the real stack: detection runs, and an open gap turns
into a crypto_backfill run whose conf names it (TriggerDagRunOperator, mapped per gap)."""
from datetime import datetime, timezone

import pytest

pytestmark = pytest.mark.integration
UTC = timezone.utc


@pytest.fixture
def old_open_gap(pg):
    """An open gap older than any other (open gaps are triggered oldest first)."""
    start, end = datetime(2019, 1, 1, 0, 0, tzinfo=UTC), datetime(2019, 1, 1, 0, 10, tzinfo=UTC)
    with pg.cursor() as cur:
        cur.execute("DELETE FROM gaps WHERE exchange = 'binance' AND symbol = 'ETH-USDT' AND gap_start = %s", (start,))
        cur.execute("INSERT INTO gaps (exchange, symbol, gap_start, gap_end, status, kind) "
                    "VALUES ('binance', 'ETH-USDT', %s, %s, 'open', 'manual') RETURNING id", (start, end))
        gap_id = cur.fetchone()[0]
    yield gap_id
    with pg.cursor() as cur:
        cur.execute("DELETE FROM gaps WHERE id = %s", (gap_id,))


def test_gap_detection_dag_triggers_a_backfill_for_an_open_gap(sim_factory, run_dag, old_open_gap, pg):
    sim = sim_factory(symbols=5)
    env = {k: sim.url(k) for k in ("BINANCE_REST_URL", "KUCOIN_REST_URL", "BINANCE_WS_URL")}
    out = run_dag("crypto_gap_detection", {"max_backfills": 1, "lookback_hours": 0.2}, env=env)
    assert out["state"] == "success", out["stdout"][-5000:]
    assert out["tasks"] == {"detect": "success", "plan_backfills": "success", "trigger_backfill[0]": "success"}
    planned = out["xcom"]["plan_backfills.return_value"]
    assert planned == [{"conf": {"exchange": "binance", "symbols": ["ETH-USDT"],
                                 "start": "2019-01-01T00:00:00+00:00", "end": "2019-01-01T00:10:00+00:00",
                                 "dry_run": False, "gap_ids": [old_open_gap]},
                        "trigger_run_id": f"gaps_{old_open_gap}_1__{out['run_id']}"}]
    triggered = [v for k, v in out["xcom"].items() if k.startswith("trigger_backfill[0].")]
    assert planned[0]["trigger_run_id"] in triggered
    # the gap stays open until the backfill run claims it
    with pg.cursor() as cur:
        cur.execute("SELECT status FROM gaps WHERE id = %s", (old_open_gap,))
        assert cur.fetchone() == ("open",)
