"""What the task of `crypto_reconcile` does, as a plain function (plain JSON in and out).

The reconciliation itself (where a run starts, how much it does, what it records) is
backfill/reconcile.py's; this reads the run's params and tells Airflow how it went.
"""
from __future__ import annotations

import logging
from datetime import timedelta

log = logging.getLogger(__name__)


class ReconcileIncomplete(RuntimeError):
    """Some minutes of the window could not be reconciled; the state did not advance, and the
    next run (or the task's retry) picks the same window up again."""


def reconcile_exchange(exchange: str, params: dict) -> dict:
    """Reconcile the next window of `exchange`; returns ReconcileResult.to_dict() (XCom).
    Status `off` (RECONCILE=off) is returned for the DAG to skip; a run that left minutes
    unreconciled raises ReconcileIncomplete."""
    from backfill.reconcile import reconcile_exchange as run

    settle, max_minutes = params.get("settle_seconds"), params.get("max_minutes")
    result = run(exchange, settle=None if settle is None else timedelta(seconds=int(settle)),
                 max_minutes=None if max_minutes is None else int(max_minutes))
    out = result.to_dict()
    s = out["summary"]
    log.info("%s: %s %s .. %s, %d symbols, %s requests, %s rows written, stream candles compared %s "
             "(differing %s, missing %s); reconciled until %s. %s", exchange, out["status"], out["start"],
             out["end"], out["symbols"], s.get("requests", 0), s.get("rows_written", 0),
             s.get("stream_compared", 0), s.get("stream_differing", 0), s.get("stream_missing", 0),
             out["reconciled_until"], out["message"])
    if not result.ok:
        raise ReconcileIncomplete(f"{exchange}: {out['status']}: {out['message']}")
    return out
