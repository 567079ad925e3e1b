"""Pipeline health as the stream supervisor sees it, and its record of what it saw.

- newest tick per exchange: Postgres (`ticks`) through the provider's PostgresHook on
  connection `crypto_postgres`;
- end offsets per topic and consumer-group positions: Kafka AdminClient through the provider's
  KafkaAdminClientHook on connection `crypto_kafka` (extra: {"bootstrap.servers": ...});
- `supervisor_checks` (migration 004): one row per program per check.
"""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from typing import Iterable, Mapping

from airflow.sdk import BaseHook

from plugins.connections import KAFKA_CONN_ID, POSTGRES_CONN_ID
from common.consumer_lag import GroupLag
from plugins.supervision import Previous, Verdict

log = logging.getLogger(__name__)

UTC = timezone.utc


class PipelineHealthHook(BaseHook):
    hook_name = "cryptopipe pipeline health"

    def __init__(self, postgres_conn_id: str = POSTGRES_CONN_ID, kafka_config_id: str = KAFKA_CONN_ID,
                 kafka_timeout_s: float = 15.0, **kwargs):
        super().__init__(**kwargs)
        self.postgres_conn_id = postgres_conn_id
        self.kafka_config_id = kafka_config_id
        self.kafka_timeout_s = kafka_timeout_s
        self._admin = None

    # -- Postgres -------------------------------------------------------------------------
    def get_pg(self):
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        return PostgresHook(postgres_conn_id=self.postgres_conn_id).get_conn()

    def newest_ticks(self, exchanges: Iterable[str]) -> tuple[datetime, dict[str, datetime | None]]:
        """(database now, {exchange: event_time of its newest stored tick or None})."""
        conn = self.get_pg()
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT now()")
                now = cur.fetchone()[0]
                out = {}
                for ex in exchanges:
                    # per exchange, so each partition answers from the (exchange, event_time) index
                    cur.execute("SELECT max(event_time) FROM ticks WHERE exchange = %s", (ex,))
                    out[ex] = cur.fetchone()[0]
            return now, out
        finally:
            conn.close()

    def tick_ages(self, exchanges: Iterable[str]) -> dict[str, float | None]:
        now, newest = self.newest_ticks(exchanges)
        return {ex: (None if t is None else max(0.0, (now - t).total_seconds())) for ex, t in newest.items()}

    def previous_checks(self, programs: Iterable[str]) -> dict[str, Previous]:
        """The latest recorded observation of each program."""
        programs = list(programs)
        if not programs:
            return {}
        conn = self.get_pg()
        try:
            with conn, conn.cursor() as cur:
                cur.execute("""SELECT DISTINCT ON (program) program, checked_at, observed
                               FROM supervisor_checks WHERE program = ANY(%s)
                               ORDER BY program, checked_at DESC, id DESC""", (programs,))
                return {name: Previous(at=at, observed=observed or {}) for name, at, observed in cur.fetchall()}
        finally:
            conn.close()

    def record_checks(self, verdicts: Iterable[Verdict], run_id: str | None, checked_at: datetime) -> int:
        rows = [(checked_at, run_id, v.program, v.state, v.verdict, v.action, v.outcome, v.state_after,
                 v.reason, json.dumps(v.observed, default=str)) for v in verdicts]
        if not rows:
            return 0
        conn = self.get_pg()
        try:
            with conn, conn.cursor() as cur:
                cur.executemany("""INSERT INTO supervisor_checks
                                   (checked_at, run_id, program, state, verdict, action, outcome,
                                    state_after, reason, observed)
                                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)""", rows)
            return len(rows)
        finally:
            conn.close()

    # -- Kafka ----------------------------------------------------------------------------
    def get_admin(self):
        if self._admin is None:
            from airflow.providers.apache.kafka.hooks.client import KafkaAdminClientHook

            self._admin = KafkaAdminClientHook(kafka_config_id=self.kafka_config_id).get_conn
        return self._admin

    def _lag_reader(self):
        from common.consumer_lag import LagReader

        return LagReader(self.get_admin(), self.kafka_timeout_s, sleep=lambda s: time.sleep(s))

    def _retrying(self, what: str, call):
        """`call()`, again while Kafka answers with a retriable error (a broker that just started:
        COORDINATOR_LOAD_IN_PROGRESS, NOT_COORDINATOR, ...), for up to kafka_timeout_s."""
        from common.consumer_lag import retrying

        return retrying(what, call, self.kafka_timeout_s, sleep=lambda s: time.sleep(s))

    def topic_end_offsets(self, topics: Iterable[str]) -> dict[str, int]:
        """topic -> sum over partitions of the last stable offset (absent topics are left out)."""
        return self._lag_reader().topic_end_offsets(topics)

    def group_lags(self, groups: Mapping[str, Iterable[str]]) -> list[GroupLag]:
        """{group: topics} -> committed and end offsets per (group, topic) (common.consumer_lag)."""
        return self._lag_reader().group_lags(groups)

    def now(self) -> datetime:
        return datetime.now(UTC)

    # -- the health view --------------------------------------------------------------------
    def snapshot(self) -> dict:
        """Everything the operators' health view shows (common.health.snapshot), consumer lag
        per group included."""
        from common import health
        from common.consumer_lag import lag_report
        from common.topics import EXCHANGES

        lag = lag_report(self._lag_reader())
        conn = self.get_pg()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                return health.snapshot(cur, list(EXCHANGES), lag)
        finally:
            conn.close()
