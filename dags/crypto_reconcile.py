"""crypto_reconcile — every 5 minutes (RECONCILE_INTERVAL_MINUTES), never two at once: every
minute closed at least RECONCILE_SETTLE_SECONDS (120) ago and not reconciled yet gets the
exchange's own 1-minute candle of every listed symbol (within SYMBOLS) in place of the one the
stream built from tickers (`source = 'rest'`; a minute without a trade stays confirmed empty), and
`candle_checks` records how far the stream's candles were. One task per exchange, each spending at
most a quarter of its exchange's REST weight. RECONCILE=off: the tasks skip.
Logic: backfill/reconcile.py (where a run starts, how much it does, what it records).
"""
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task

from common.settings import get_settings
from common.topics import EXCHANGES
from plugins.schedules import periodic

INTERVAL_MINUTES = get_settings().reconcile_interval_minutes


@dag(
    dag_id="crypto_reconcile",
    **periodic(timedelta(minutes=INTERVAL_MINUTES), retry_delay=timedelta(seconds=60)),
    tags=["cryptopipe", "backfill"],
    doc_md=__doc__,
    params={
        "settle_seconds": Param(None, type=["null", "integer"], minimum=0, maximum=86400,
                                description="minutes closed less than this long ago wait for a later run "
                                            "(empty: RECONCILE_SETTLE_SECONDS)"),
        "max_minutes": Param(None, type=["null", "integer"], minimum=1, maximum=1440,
                             description="the most minutes one run reconciles per exchange "
                                         "(empty: RECONCILE_MAX_MINUTES)"),
    },
)
def crypto_reconcile():
    @task(max_active_tis_per_dagrun=len(EXCHANGES))
    def reconcile(exchange: str) -> dict:
        from airflow.sdk import get_current_context
        from airflow.sdk.exceptions import AirflowSkipException

        from plugins.reconcile_tasks import reconcile_exchange

        out = reconcile_exchange(exchange, get_current_context()["params"])
        if out["status"] == "off":
            print(f"{exchange}: {out['message']}: skipped")
            raise AirflowSkipException(out["message"])
        return out

    reconcile.expand(exchange=list(EXCHANGES))


crypto_reconcile()
