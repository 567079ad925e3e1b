"""A short `cryptopipe bench-api` on the real stack, so the prices server's fan-out benchmark keeps
working (it once started its extractors through a module that no longer existed, and counted
ticks.v1 records as ticks). Figures are checked for being real and consistent with each other,
never against a time or a rate target: performance belongs to docs/benchmarks.md."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_cryptopipe_bench_api_short_run(stack, tmp_path):
    out = tmp_path / "api.json"
    cmd = [sys.executable, "-m", "cryptopipe", "bench-api", "--rate", "200", "--symbols", "40", "--clients", "20",
           "--duration", "8", "--warmup", "2", "--json", str(out), "--work-dir", str(tmp_path / "work")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, f"bench-api failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "tick -> client" in r.stdout and "ticks into the server" in r.stdout
    doc = json.loads(out.read_text())
    assert doc["settings"]["clients"] == 20 and doc["window_s"] >= 8

    # a ticks.v1 record carries several ticks: the server decodes at least one tick per record
    assert doc["records_into_server_per_s"] > 0
    assert doc["ticks_into_server_per_s"] >= doc["records_into_server_per_s"]
    # two every-symbol clients receive every tick the server reads, each: more out than in
    assert doc["ticks_sent_per_s"] > doc["ticks_into_server_per_s"]
    assert doc["frames_sent_per_s"] > 0
    lat = doc["tick_to_client_kucoin_ms"]
    for group in ("all", "ten"):
        got = lat[group]
        assert got["n"] > 0 and 0 < got["p50_ms"] <= got["p95_ms"] <= got["p99_ms"] <= got["max_ms"], lat
    assert doc["sim_send_delay_kucoin_ms"]["n"] > 0
    assert doc["event_to_server_tail"]["n"] > 0 and doc["event_to_server_tail"]["p99_ms_at_most"] is not None
    # no connection ended on an error
    assert doc["disconnects"]["error"] == 0
    assert sum(doc["client_side"]["connects"].values()) >= 20
    server = doc["server"]
    assert server["peak_rss_mb"] > 0 and len(server["rss_mb_series"]) >= 5
    assert {"sim", "transform", "load", "api", "extract-binance", "extract-kucoin", "clients"} <= \
        {p["process"] for p in doc["processes"]}
