"""crypto_cross_check — hourly: compare each pair listed on both exchanges minute by minute
(`candles_1m` closes); where they differ by more than the threshold (CROSS_CHECK_THRESHOLD_BPS,
default 50 bps) for several minutes in a row (CROSS_CHECK_MIN_MINUTES, default 3), record the
window in `price_divergences` (a re-run merges into the same rows). Each run looks at its hour
plus one hour before it, so a window crossing the hour is seen whole.
Logic: backfill/cross_check.py.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import Param, dag, get_current_context, task

from plugins.schedules import periodic


@dag(
    dag_id="crypto_cross_check",
    **periodic(timedelta(hours=1), retry_delay=timedelta(minutes=1)),
    tags=["cryptopipe", "validation"],
    doc_md=__doc__,
    params={
        "threshold_bps": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=10000,
                               description="closes further apart than this (basis points of their mid) "
                                           "diverge; empty: the CROSS_CHECK_THRESHOLD_BPS setting"),
        "min_minutes": Param(None, type=["null", "integer"], minimum=1, maximum=1440,
                             description="minutes in a row that make a divergence; empty: CROSS_CHECK_MIN_MINUTES"),
        "hours": Param(1, type="number", minimum=0.02, maximum=168, description="hours checked, up to the run's end"),
        "lookback_hours": Param(1, type="number", minimum=0, maximum=24,
                                description="checked again before them (windows crossing the previous run)"),
    },
)
def crypto_cross_check():
    @task
    def check() -> dict:
        from backfill.cross_check import run

        ctx = get_current_context()
        p = ctx["params"]
        end = ctx.get("data_interval_end") or datetime.now(timezone.utc)
        summary = run(end, hours=p["hours"], lookback_hours=p["lookback_hours"],
                      threshold_bps=p["threshold_bps"], min_minutes=p["min_minutes"])
        for w in summary["windows"]:
            print(f"divergence {w['symbol']} {w['exchange_a']}/{w['exchange_b']} {w['window_start']} .. "
                  f"{w['window_end']} max {w['max_bps']} bps ({w['close_a']} vs {w['close_b']})")
        print(f"{summary['divergences']} divergences in {summary['start']} .. {summary['end']}, "
              f"{summary['rows_changed']} rows changed")
        summary["windows"] = summary["windows"][:100]
        return summary

    check()


crypto_cross_check()
