"""crypto_gap_detection — every 15 minutes (CRYPTOPIPE_GAP_DETECTION_MINUTES), never two at once:
detect and record gaps in the stored history (backfill.detect), then trigger one crypto_backfill
run per open gap with its parameters in the run's conf. The backfill run claims the gap and marks
it filled (or failed, with the reason). Logic: plugins/backfill_tasks.py, backfill/detect.py,
backfill/gap_store.py.
"""
from __future__ import annotations

import os
from datetime import timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, get_current_context, task

from plugins.schedules import periodic

INTERVAL_MINUTES = int(os.environ.get("CRYPTOPIPE_GAP_DETECTION_MINUTES", "15"))


@dag(
    dag_id="crypto_gap_detection",
    **periodic(timedelta(minutes=INTERVAL_MINUTES), retry_delay=timedelta(seconds=30)),
    tags=["cryptopipe", "backfill"],
    doc_md=__doc__,
    params={
        "lookback_hours": Param(6, type="number", minimum=0.1, maximum=168,
                                description="how far back each detection looks"),
        "settle_seconds": Param(60, type="integer", minimum=0, maximum=3600,
                                description="the newest seconds are left to the loader"),
        "max_backfills": Param(20, type="integer", minimum=0, maximum=200,
                               description="open gaps (oldest first) triggered per run"),
    },
)
def crypto_gap_detection():
    @task
    def detect() -> dict:
        from plugins.backfill_tasks import detect as detect_gaps

        p = get_current_context()["params"]
        return detect_gaps(p["lookback_hours"], p["settle_seconds"])

    @task
    def plan_backfills(detected: dict) -> list[dict]:
        from plugins.backfill_tasks import backfill_triggers

        ctx = get_current_context()
        return backfill_triggers(ctx["params"]["max_backfills"], ctx["run_id"])

    triggers = plan_backfills(detect())
    TriggerDagRunOperator.partial(
        task_id="trigger_backfill", trigger_dag_id="crypto_backfill", logical_date=None,
        wait_for_completion=False, skip_when_already_exists=True,
    ).expand_kwargs(triggers)


crypto_gap_detection()
