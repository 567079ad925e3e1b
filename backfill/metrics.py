"""Counters of the errors backfill handles and goes on after (prometheus-client, default registry).

Every place in backfill/ and plugins/ that catches an error without raising it again logs a line
and counts it here, by where and by the error's type, so a degraded run shows up in figures and
not only in a log. The counters live in the process that ran the work: a long-lived process that
serves the default registry exposes them; for the CLI and Airflow's task processes they are read
with `errors_seen()` (and the log line says the same).
"""
from __future__ import annotations

from prometheus_client import REGISTRY, Counter

HANDLED_ERRORS = Counter("cryptopipe_backfill_handled_errors_total",
                         "errors backfill caught, logged and went on after, by where and type",
                         ["where", "error"])


def count_handled(where: str, error: BaseException) -> None:
    HANDLED_ERRORS.labels(where, type(error).__name__).inc()


def errors_seen(where: str, error: str) -> float:
    """How many errors of type `error` (the class name) were handled at `where` in this process."""
    value = REGISTRY.get_sample_value("cryptopipe_backfill_handled_errors_total", {"where": where, "error": error})
    return value or 0.0
