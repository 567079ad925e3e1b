"""`dag.test()` of crypto_backfill against the simulator (ccxt REST) and the real stack
(Postgres, S3): every minute of the window lands in candles_1m with the simulator's true values,
the gap it was triggered for becomes `filled`, and bad parameters fail `validate` readably."""
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

pytestmark = pytest.mark.integration
UTC = timezone.utc


@pytest.fixture
def sim_env(sim_factory):
    sim = sim_factory(symbols=5)
    env = {k: sim.url(k) for k in ("BINANCE_REST_URL", "KUCOIN_REST_URL", "BINANCE_WS_URL")}
    return sim, env


def liquid_symbols(sim, exchange, n):
    return [s["symbol"] for s in sim.control.symbols(exchange) if not s["illiquid"]][-n:]


def stored_candles(pg, exchange, symbol, start, end):
    with pg.cursor() as cur:
        cur.execute("SELECT open_time, open, high, low, close, volume, source FROM candles_1m WHERE exchange = %s "
                    "AND symbol = %s AND open_time >= %s AND open_time < %s ORDER BY open_time",
                    (exchange, symbol, start, end))
        return cur.fetchall()


def true_candles(sim, exchange, symbol, start, end):
    ms = lambda t: int(t.timestamp() * 1000)  # noqa: E731
    out = []
    for c in sim.control.candles(exchange, symbol, ms(start), ms(end)):
        t = datetime.fromtimestamp(c["open_ms"] / 1000, tz=UTC)
        if start <= t < end:
            out.append((t, *(Decimal(c[k]) for k in ("open", "high", "low", "close", "volume")), "rest"))
    return out


def test_backfill_dag_fills_every_minute_with_true_values_and_the_gap(sim_env, run_dag, pg):
    sim, env = sim_env
    exchange = "kucoin"
    symbols = liquid_symbols(sim, exchange, 2)
    end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    start = end - timedelta(minutes=20)
    gap_start, gap_end = start + timedelta(minutes=5), start + timedelta(minutes=12)
    with pg.cursor() as cur:
        cur.execute("DELETE FROM gaps WHERE exchange = %s AND symbol = %s AND gap_start = %s AND gap_end = %s",
                    (exchange, symbols[0], gap_start, gap_end))
        cur.execute("INSERT INTO gaps (exchange, symbol, gap_start, gap_end, status, kind) "
                    "VALUES (%s, %s, %s, %s, 'open', 'manual') RETURNING id", (exchange, symbols[0], gap_start, gap_end))
        gap_id = cur.fetchone()[0]

    out = run_dag("crypto_backfill", {"exchange": exchange, "symbols": symbols, "start": start.isoformat(),
                                      "end": end.isoformat(), "gap_ids": [gap_id], "max_tasks": 4}, env=env)
    assert out["state"] == "success", out["stdout"][-5000:]
    assert out["tasks"]["validate"] == out["tasks"]["plan"] == out["tasks"]["summarize"] == "success"
    mapped = {k: v for k, v in out["tasks"].items() if k.startswith("fill_chunks[")}
    assert mapped and set(mapped.values()) == {"success"}

    summary = out["xcom"]["summarize.return_value"]
    assert summary["ok"] and gap_id in summary["gaps_filled"]
    assert summary["chunks_failed"] == 0 and summary["minutes"] == 20 * len(symbols)
    for symbol in symbols:
        truth = true_candles(sim, exchange, symbol, start, end)
        assert len(truth) == 20
        assert stored_candles(pg, exchange, symbol, start, end) == truth
    with pg.cursor() as cur:
        cur.execute("SELECT status, rows_filled, filled_at IS NOT NULL FROM gaps WHERE id = %s", (gap_id,))
        assert cur.fetchone() == ("filled", 7, True)


def test_backfill_dag_rejects_bad_parameters_readably(sim_env, run_dag):
    _, env = sim_env
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    out = run_dag("crypto_backfill", {"exchange": "binance", "symbols": ["BTC-USDT", "NOPE-USDT"],
                                      "start": (now - timedelta(hours=1)).isoformat(),
                                      "end": (now - timedelta(hours=2)).isoformat()}, env=env)
    assert out["state"] == "failed"
    assert out["tasks"]["validate"] == "failed"
    assert out["tasks"].get("plan") == "upstream_failed"
    want = (f"end ({(now - timedelta(hours=2)):%Y-%m-%d %H:%M} UTC) must be after start "
            f"({(now - timedelta(hours=1)):%Y-%m-%d %H:%M} UTC)")
    assert want in out["stdout"]
    unknown = run_dag("crypto_backfill", {"exchange": "binance", "symbols": ["BTC-USDT", "NOPE-USDT"],
                                          "start": (now - timedelta(hours=1)).isoformat(),
                                          "end": now.isoformat()}, env=env)
    assert unknown["tasks"]["validate"] == "failed"
    assert "binance has no active spot market NOPE-USDT" in unknown["stdout"]


def test_backfill_dag_dry_run_plans_and_writes_nothing(sim_env, run_dag, pg):
    sim, env = sim_env
    symbols = liquid_symbols(sim, "binance", 2)
    end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=3, minutes=7)
    start = end - timedelta(minutes=30)
    out = run_dag("crypto_backfill", {"exchange": "binance", "symbols": ["ALL"], "start": start.isoformat(),
                                      "end": end.isoformat(), "dry_run": True}, env=env)
    assert out["state"] == "success", out["stdout"][-5000:]
    summary = out["xcom"]["summarize.return_value"]
    assert summary["dry_run"] and summary["symbols"] == 5 and summary["chunks"] >= 5 and summary["rows_written"] == 0
    assert not any(k.startswith("fill_chunks[") and v == "success" for k, v in out["tasks"].items())
    for symbol in symbols:
        assert [r for r in stored_candles(pg, "binance", symbol, start, end) if r[6] == "rest"] == []
