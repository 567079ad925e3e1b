"""`cryptopipe backfill` and `cryptopipe gaps` as an operator runs them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.backfill.conftest import assert_matches_truth, pick_symbols

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]


def cryptopipe(sim, *args):
    env = dict(os.environ, BINANCE_REST_URL=sim.env["BINANCE_REST_URL"], KUCOIN_REST_URL=sim.env["KUCOIN_REST_URL"])
    return subprocess.run([sys.executable, "-m", "cryptopipe", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_backfill_fills_and_reports(sim_rest, window, pg):
    w = window(45)
    symbols = w.use("kucoin", pick_symbols(sim_rest.control, "kucoin", 1, 1))
    args = ["backfill", "--exchange", "kucoin", "--symbols", ",".join(s.lower() for s in symbols),
            "--start", w.start.isoformat(), "--end", w.end.strftime("%Y-%m-%d %H:%M")]
    dry = cryptopipe(sim_rest, *args, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["chunks_total"] >= len(symbols) and json.loads(dry.stdout)["rows_written"] == 0
    run = cryptopipe(sim_rest, *args, "--json")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["ok"] and out["rows_written"] == 45 * len(symbols) and out["chunks_failed"] == 0
    assert_matches_truth(pg, sim_rest.control, "kucoin", symbols, w.start, w.end)
    text = cryptopipe(sim_rest, *args)
    assert text.returncode == 0 and "skipped (already done) " in text.stdout


@pytest.mark.parametrize("symbols, start, end, words", [
    ("BTC-USDT'; DROP TABLE candles_1m; --", "2024-05-01", "2024-05-02", "is not BASE-QUOTE"),
    ("../../etc/passwd", "2024-05-01", "2024-05-02", "is not BASE-QUOTE"),
    ("ВТС-USDT", "2024-05-01", "2024-05-02", "non-ASCII"),
    ("NOPE-USDT", "2024-05-01", "2024-05-02", "binance has no active spot market NOPE-USDT"),
    ("BTC-USDT", "2024-05-02", "2024-05-01", "must be after start"),
    ("BTC-USDT", "1970-01-01", "1970-01-02", "before 2017-07-01"),
    ("BTC-USDT", "2024-05-01", "3024-05-01", "in the future"),
    ("BTC-USDT", "2024-01-01", "2024-05-01", "the maximum is 168 hours"),
    ("BTC-USDT", "2024-05-01T25:99", "2024-05-02", "is not a date-time"),
])
def test_cli_rejects_bad_parameters_with_a_clear_message(sim_rest, symbols, start, end, words):
    r = cryptopipe(sim_rest, "backfill", "--exchange", "binance", "--symbols", symbols, "--start", start, "--end", end)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert words in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_cli_gaps_lists_json_and_table(sim_rest):
    r = cryptopipe(sim_rest, "gaps", "--json", "--limit", "5")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert isinstance(rows, list) and len(rows) <= 5
    assert all(set(g) >= {"id", "exchange", "symbol", "gap_start", "gap_end", "status"} for g in rows)
    t = cryptopipe(sim_rest, "gaps", "--status", "filled", "--limit", "3")
    assert t.returncode == 0 and "gaps (" in t.stdout
    bad = cryptopipe(sim_rest, "gaps", "--exchange", "nyse")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
