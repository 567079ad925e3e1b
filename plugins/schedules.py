"""What every periodic cryptopipe DAG shares: a fixed start in the past, no catch-up (a missed run
is covered by the next one, which looks back over its own window), never two runs of one DAG at once,
one retry."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

START_DATE = datetime(2026, 1, 1, tzinfo=timezone.utc)


def periodic(every: timedelta, *, retry_delay: timedelta | None = None, **dag_kwargs) -> dict:
    """The `@dag(...)` arguments of a job run every `every`; `dag_kwargs` are passed on as they are."""
    args = dict(schedule=every, start_date=START_DATE, catchup=False, max_active_runs=1, **dag_kwargs)
    if retry_delay is not None:
        args["default_args"] = {"retries": 1, "retry_delay": retry_delay}
    return args
