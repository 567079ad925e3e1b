"""A short `cryptopipe bench --rate max` on the real stack, so every part of the benchmark keeps
working: the search, the tuned search, the step past capacity, the limit lines and the primary
key's cost. Figures are checked for being real (rows stored, latencies measured, every process
sampled, every test computed), never against a time or a rate target: performance belongs to
the benchmark's report (docs/benchmarks.md)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

PIPELINE = {"sim", "extract-binance", "extract-kucoin", "transform", "load", "archive"}
SHARED = {"kafka", "postgres", "s3proxy"}


def _check_step(step: dict, latency: bool = True) -> None:
    assert step["offered_ticks_per_s"] > 0 and step["stored_ticks_per_s"] > 0
    assert step["feed"]["symbols"] > 0 and step["feed"]["sim_rate"] > 0
    assert set(step["lag"]) == {"transform", "load", "archive"}
    for name, lag in step["lag"].items():
        assert lag["samples"] >= 5 and lag["inflow_records_per_s"] > 0, (name, lag)
        assert isinstance(lag["grows"], bool) and lag["growth_s_per_s"] is not None
    assert isinstance(step["kept_up"], bool) and step["verdict"]
    assert not step["sustained"]        # a window under 60 s is never called sustained
    names = {p["process"] for p in step["processes"]}
    assert PIPELINE | SHARED <= names, names
    for p in step["processes"]:
        assert p["cpu_percent"] is not None and p["peak_rss_mb"] > 0, p
        if p["role"] != "shared":
            assert p["cpu_us_per_stored_tick"] > 0 and len(p["rss_mb_series"]) >= 5, p
    assert step["cpu_us_per_stored_tick"]["all"] > step["cpu_us_per_stored_tick"]["pipeline"] > 0
    if latency:
        lat = step["latency"]
        assert lat["rows"] > 0 and lat["transactions_unseen"] == 0
        assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        # the commit-side bound can never be earlier than the transaction's start
        assert lat["txn_start_p50_ms"] <= lat["p50_ms"]


def test_cryptopipe_bench_max_short_run(stack, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "cryptopipe", "bench", "--rate", "max", "--ramp", "1000", "--max-steps", "1",
           "--duration", "10", "--warmup", "2", "--tuned", "--poll-timeout 0.1", "--limit-seconds", "3",
           "--json", str(out), "--work-dir", str(tmp_path / "work")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"bench failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "limit lines" in r.stdout and "primary key of ticks" in r.stdout
    doc = json.loads(out.read_text())
    assert doc["command"].startswith("cryptopipe bench --rate max")
    assert doc["date"].endswith("UTC") and len(doc["environment"]["loadavg_1_5_15"]) == 3

    defaults = doc["ours"]["defaults"]
    assert defaults["mode"] == "max" and len(defaults["steps"]) == 1
    first = defaults["max"] or defaults["first_failed"]
    assert first["settings"]["tuning"] == "shipped defaults" and first["target_ticks_per_s"] == 1000
    _check_step(first)
    tuned = doc["ours"]["tuned"]
    step = tuned["max"] or tuned["first_failed"]
    assert step["settings"]["flags"] == ["--poll-timeout", "0.1"]
    _check_step(step, latency=False)
    if defaults["max"]:
        past = doc["ours"]["past_capacity"]
        assert past["target_ticks_per_s"] == 2000 and past["label"] == "past capacity"
        # drained (and its latency measured) only if it kept up after all
        assert (past["latency"] is None) == (not past["kept_up"])
        _check_step(past, latency=False)
        assert all(p["rss_slope_mb_per_min"] is not None for p in past["processes"] if p["role"] != "shared")

    limits = doc["limits"]
    assert limits["simulator"]["sim_ticks_out_per_s"] > 0
    kafka = limits["kafka"]
    assert kafka["complete"] and kafka["ticks_per_s"] > 0 and kafka["records"] > 0
    assert kafka["cpu_us_per_tick"]["kafka"] is not None
    variants = {(v["path"], v["primary_key"]): v for v in limits["postgres"]["variants"]}
    assert set(variants) == {("copy", True), ("loader", True), ("loader", False), ("copy", False)}
    for v in variants.values():
        assert v["rows"] > 0 and v["rows_per_s"] > 0 and v["postgres_cpu_us_per_row"] > 0, v
    pk = doc["headline"]["primary_key_cost"]
    assert pk["loader_rows_per_s_with"] == variants[("loader", True)]["rows_per_s"]
    assert pk["cpu_us_per_row_with"] > 0 and pk["cpu_us_per_row_without"] > 0
    assert set(doc["headline"]["limits"]) == {"simulator_ticks_per_s", "kafka_ticks_per_s",
                                              "postgres_copy_rows_per_s", "postgres_loader_rows_per_s"}

    # the run cleaned up after itself: its topics and its database are gone
    from common.db import connect
    from common.kafka import make_admin

    topics = make_admin().list_topics(timeout=10).topics
    assert not [t for t in topics if "_bench" in t and any(t.endswith(s["run_id"]) for s in defaults["steps"])]
    assert not [t for t in topics if t.startswith("bench_kafka_limit_")]
    conn = connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE 'cryptopipe_bench_%%'")
            assert cur.fetchall() == []
    finally:
        conn.close()
