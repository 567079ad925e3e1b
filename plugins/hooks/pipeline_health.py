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
from plugins.supervision import GroupLag, Previous, Verdict

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

    def _partitions(self, topics: Iterable[str]) -> list:
        from confluent_kafka import TopicPartition

        admin = self.get_admin()
        meta = admin.list_topics(timeout=self.kafka_timeout_s)
        out = []
        for topic in topics:
            if topic in meta.topics and meta.topics[topic].error is None:
                out += [TopicPartition(topic, p) for p in sorted(meta.topics[topic].partitions)]
        return out

    def _offsets(self, tps: list, spec) -> dict[tuple[str, int], int]:
        from confluent_kafka import IsolationLevel

        if not tps:
            return {}
        def read():
            futures = self.get_admin().list_offsets({tp: spec for tp in tps},
                                                   isolation_level=IsolationLevel.READ_COMMITTED,
                                                   request_timeout=self.kafka_timeout_s)
            return {(tp.topic, tp.partition): fut.result().offset for tp, fut in futures.items()}
        return self._retrying("list offsets", read)

    def _retrying(self, what: str, call):
        """`call()`, again while Kafka answers with a retriable error (a broker that just started:
        COORDINATOR_LOAD_IN_PROGRESS, NOT_COORDINATOR, ...), for up to kafka_timeout_s."""
        from confluent_kafka import KafkaError, KafkaException

        transient = {KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
                     KafkaError.NOT_COORDINATOR, KafkaError.LEADER_NOT_AVAILABLE,
                     KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.REQUEST_TIMED_OUT,
                     KafkaError._TIMED_OUT, KafkaError._TRANSPORT}
        deadline = time.monotonic() + self.kafka_timeout_s
        delay = 0.5
        while True:
            try:
                return call()
            except KafkaException as e:
                err = e.args[0] if e.args else None
                retriable = isinstance(err, KafkaError) and (err.retriable() or err.code() in transient)
                if not retriable or time.monotonic() + delay > deadline:
                    raise
                log.info("%s: %s; retrying in %.1fs", what, err, delay)
                time.sleep(delay)
                delay = min(delay * 2, 4.0)

    def topic_end_offsets(self, topics: Iterable[str]) -> dict[str, int]:
        """topic -> sum over partitions of the last stable offset (absent topics are left out)."""
        from confluent_kafka.admin import OffsetSpec

        ends = self._offsets(self._partitions(topics), OffsetSpec.latest())
        out: dict[str, int] = {}
        for (topic, _), off in ends.items():
            out[topic] = out.get(topic, 0) + off
        return out

    def group_lags(self, groups: Mapping[str, Iterable[str]]) -> list[GroupLag]:
        """{group: topics} -> committed and end offsets per (group, topic). A partition the group
        never committed counts from its low watermark (where `auto.offset.reset=earliest` starts)."""
        from confluent_kafka import ConsumerGroupTopicPartitions
        from confluent_kafka.admin import OffsetSpec

        all_topics = sorted({t for ts in groups.values() for t in ts})
        tps = self._partitions(all_topics)
        ends = self._offsets(tps, OffsetSpec.latest())
        starts = self._offsets(tps, OffsetSpec.earliest())
        admin = self.get_admin()
        out = []
        for group, topics in groups.items():
            mine = [tp for tp in tps if tp.topic in set(topics)]
            committed: dict[tuple[str, int], int] = {}
            if mine:
                def read(group=group, mine=mine):
                    return admin.list_consumer_group_offsets(
                        [ConsumerGroupTopicPartitions(group, mine)],
                        request_timeout=self.kafka_timeout_s)[group].result().topic_partitions
                for tp in self._retrying(f"offsets of group {group}", read):
                    if tp.offset >= 0:
                        committed[(tp.topic, tp.partition)] = tp.offset
            for topic in topics:
                keys = [(tp.topic, tp.partition) for tp in mine if tp.topic == topic]
                if not keys:
                    continue
                out.append(GroupLag(group=group, topic=topic,
                                    committed=sum(committed.get(k, starts[k]) for k in keys),
                                    end=sum(ends[k] for k in keys)))
        return out

    def now(self) -> datetime:
        return datetime.now(UTC)
