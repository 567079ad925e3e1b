"""The four DAGs import without errors, cheaply, and have the shape the design names.

DagBag parsing runs in a subprocess with a throwaway AIRFLOW_HOME, so the import time measured is
the one a fresh dag-processor pays, and no Airflow state leaks into other tests.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

PARSE = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag
    t1 = time.perf_counter()
    bag = DagBag(dag_folder=sys.argv[1])
    t2 = time.perf_counter()
    heavy = sorted(m for m in ("ccxt", "psycopg2", "boto3", "confluent_kafka", "backfill.rest", "aiohttp")
                   if m in sys.modules)
    out = {"errors": bag.import_errors, "import_airflow_s": t1 - t0, "parse_dags_s": t2 - t1,
           "heavy_modules": heavy,
           "dags": {d.dag_id: {"tasks": sorted(t.task_id for t in d.tasks),
                               "max_active_runs": d.max_active_runs,
                               "max_active_tis_per_dagrun": {t.task_id: t.max_active_tis_per_dagrun
                                                             for t in d.tasks},
                               "schedule": str(d.schedule) if d.schedule is not None else None,
                               "catchup": d.catchup,
                               "params": sorted(d.params.keys())}
                    for d in bag.dags.values()}}
    print("RESULT" + json.dumps(out, default=str))
""")


def parse(tmp_path_factory, folder, **env_extra) -> dict:
    home = tmp_path_factory.mktemp("airflow_home")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "PYTHONPATH": str(ROOT), **env_extra}
    proc = subprocess.run([sys.executable, "-c", PARSE, str(folder)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    return json.loads(line[-1][len("RESULT"):])


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    result = parse(tmp_path_factory, ROOT / "dags")
    print(f"\nimport airflow: {result['import_airflow_s']:.2f}s; parse the four DAG files: "
          f"{result['parse_dags_s']:.3f}s")
    return result


def test_five_dags_no_import_errors(parsed):
    assert parsed["errors"] == {}
    assert sorted(parsed["dags"]) == ["crypto_backfill", "crypto_cross_check", "crypto_gap_detection",
                                      "crypto_reconcile", "crypto_stream_supervisor"]


def test_dag_files_do_nothing_heavy_at_import(parsed):
    # network/database clients are imported inside tasks only
    assert parsed["heavy_modules"] == []
    # generous bound: parsing (not the one-off Airflow import) must stay far below 2 s
    assert parsed["parse_dags_s"] < 2.0


def test_backfill_dag_shape(parsed):
    d = parsed["dags"]["crypto_backfill"]
    assert d["schedule"] is None
    assert d["tasks"] == ["fill_chunks", "plan", "summarize", "validate"]
    assert set(d["params"]) >= {"exchange", "symbols", "start", "end", "dry_run"}


def test_scheduled_dags_never_overlap(parsed):
    gaps, sup = parsed["dags"]["crypto_gap_detection"], parsed["dags"]["crypto_stream_supervisor"]
    assert gaps["max_active_runs"] == 1 and sup["max_active_runs"] == 1
    assert gaps["catchup"] is False and sup["catchup"] is False
    assert "0:15:00" in gaps["schedule"] and "0:05:00" in sup["schedule"]
    assert gaps["tasks"] == ["detect", "plan_backfills", "trigger_backfill"]
    assert sup["tasks"] == ["check_and_restart"]


def test_reconcile_dag_every_5_minutes_one_run_at_a_time_one_task_per_exchange(parsed):
    d = parsed["dags"]["crypto_reconcile"]
    assert d["max_active_runs"] == 1 and d["catchup"] is False
    assert "0:05:00" in d["schedule"]
    assert d["tasks"] == ["reconcile"]
    assert d["max_active_tis_per_dagrun"] == {"reconcile": 2}      # both exchanges at once, never more
    assert set(d["params"]) == {"settle_seconds", "max_minutes"}


def test_reconcile_schedule_follows_its_setting(tmp_path_factory):
    result = parse(tmp_path_factory, ROOT / "dags" / "crypto_reconcile.py", RECONCILE_INTERVAL_MINUTES="7")
    assert result["errors"] == {}
    assert "0:07:00" in result["dags"]["crypto_reconcile"]["schedule"]


def test_cross_check_dag_shape(parsed):
    d = parsed["dags"]["crypto_cross_check"]
    assert "1:00:00" in d["schedule"] and d["max_active_runs"] == 1 and d["catchup"] is False
    assert d["tasks"] == ["check"]
    assert set(d["params"]) == {"threshold_bps", "min_minutes", "hours", "lookback_hours"}
