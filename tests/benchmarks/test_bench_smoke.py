"""A short run of `cryptopipe bench` on the real stack, so the benchmark keeps working.
Figures are checked for being real (rows stored, latencies measured, every process sampled),
never against a time or a rate target: performance belongs to the benchmark's report."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_cryptopipe_bench_short_run(stack, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "cryptopipe", "bench", "--duration", "6", "--warmup", "1", "--rate", "300",
           "--symbols", "30", "--poll-timeout", "0.1", "--archive-max-age", "1", "--json", str(out), "--work-dir", str(tmp_path / "work")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, f"bench failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "sustained ticks/s into Postgres" in r.stdout
    doc = json.loads(out.read_text())
    assert doc["command"].startswith("cryptopipe bench --duration 6")
    assert doc["date"].endswith("UTC")
    ours = doc["ours"]
    assert ours["sustained_ticks_per_s"] > 0
    assert ours["offered_ticks_per_s"] > 0
    assert ours["rows_in_window_postgres"] > 0
    lat = ours["latency"]
    assert lat["rows"] > 0 and lat["transactions_unseen"] == 0
    assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    # the commit-side bound can never be earlier than the transaction's start
    assert lat["txn_start_p50_ms"] <= lat["p50_ms"]
    names = {p["process"] for p in ours["processes"]}
    assert {"sim", "extract-binance", "extract-kucoin", "transform", "load", "archive"} <= names
    for p in ours["processes"]:
        if not p["process"].endswith("(shared)"):
            assert p["peak_rss_mb"] > 0 and p["cpu_percent"] is not None, p
    assert ours["archived_records_per_s"] > 0
    assert set(ours["lag"]) == {"transform", "load", "archive"}
    # the run cleaned up after itself: its private topics are gone
    from common.kafka import make_admin

    topics = make_admin().list_topics(timeout=10).topics
    assert not [t for t in topics if t.endswith(f"_bench{ours['run_id']}")]
