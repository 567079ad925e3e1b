"""crypto_backfill — fill 1-minute candles from the exchanges' REST APIs (manual or triggered by
crypto_gap_detection). Validate → plan chunks → one mapped task per chunk (or batch) → summary:
the stages of the one backfill service (backfill.fill), the gaps settled once at the end.

The trigger form validates types (Params); `validate` checks the rest on the server and fails the
run with a message a person understands (end after start, window within the configured maximum,
symbols known to the exchange, nothing in the future). Logic: plugins/backfill_tasks.py, backfill/.
"""
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task

from common.exchanges import EXCHANGES

SYMBOL_PATTERN = r"^(ALL|[A-Za-z0-9]{1,20}[-/][A-Za-z0-9]{1,20})$"


@dag(
    dag_id="crypto_backfill",
    schedule=None,
    catchup=False,
    max_active_runs=4,
    tags=["cryptopipe", "backfill"],
    doc_md=__doc__,
    params={
        "exchange": Param(EXCHANGES[0], type="string", enum=list(EXCHANGES), title="Exchange"),
        "symbols": Param(["ALL"], type="array", minItems=1, maxItems=2000,
                         items={"type": "string", "pattern": SYMBOL_PATTERN},
                         title="Symbols", description="BASE-QUOTE symbols such as BTC-USDT, one per line, "
                                                      "or ALL for every active spot market of the exchange"),
        "start": Param(type="string", format="date-time", title="Start (UTC)",
                       description="first minute to fill, e.g. 2026-11-24T10:00:00Z"),
        "end": Param(type="string", format="date-time", title="End (UTC, exclusive)",
                     description="minute after the last one to fill; not in the future"),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="validate and plan only; fetch and store nothing"),
        "max_tasks": Param(16, type="integer", minimum=1, maximum=256, title="Parallel chunk tasks",
                           description="at most this many mapped tasks; chunks beyond are batched"),
        "gap_ids": Param([], type="array", items={"type": "integer"}, title="Gap ids",
                         description="set by crypto_gap_detection: the gaps this run fills"),
    },
    default_args={"retries": 0},
)
def crypto_backfill():
    @task(retries=0)
    def validate() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from plugins.backfill_tasks import InvalidParams, validate_and_claim

        params = dict(get_current_context()["params"])
        try:
            return validate_and_claim(params)
        except InvalidParams as e:
            # a bad request does not get better by retrying
            raise AirflowFailException(str(e)) from None

    @task
    def plan(validated: dict) -> list:
        from plugins.backfill_tasks import plan as plan_chunks

        planned = plan_chunks(validated)
        get_current_context()["ti"].xcom_push(key="stats", value=planned["stats"])
        return planned["batches"]

    @task(retries=2, retry_delay=timedelta(seconds=20), max_active_tis_per_dagrun=4)
    def fill_chunks(validated: dict, batch: list) -> dict:
        from plugins.backfill_tasks import run_batch

        return run_batch(validated["request"], batch)

    @task(trigger_rule="all_done", retries=0)
    def summarize() -> dict:
        """Runs however the chunk tasks ended, so the gaps are settled and the summary written."""
        from airflow.sdk.exceptions import AirflowFailException

        from plugins.backfill_tasks import format_summary, summarize as add_up

        ti = get_current_context()["ti"]
        validated = ti.xcom_pull(task_ids="validate")
        if not validated:
            raise AirflowFailException("nothing was backfilled: the parameters were rejected "
                                       "(the validate task's log says why)")
        batches = ti.xcom_pull(task_ids="plan")
        if batches is None:
            raise AirflowFailException("nothing was backfilled: planning failed (see the plan task's log)")
        stats = ti.xcom_pull(task_ids="plan", key="stats") or {}
        results = ti.xcom_pull(task_ids="fill_chunks", map_indexes=list(range(len(batches)))) if batches else []
        if not isinstance(results, list):
            results = [results]
        summary = add_up(validated, stats, results, len(batches))
        print(format_summary(summary))
        if not summary["ok"]:
            ti.xcom_push(key="summary", value=summary)
            raise AirflowFailException("backfill incomplete:\n" + format_summary(summary))
        return summary

    validated = validate()
    batches = plan(validated)
    filled = fill_chunks.partial(validated=validated).expand(batch=batches)
    filled >> summarize()


crypto_backfill()
