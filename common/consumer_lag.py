"""Consumer-group lag read from Kafka's admin API: end offsets per topic, committed offsets per
group. Used by the stream supervisor's health hook (plugins/hooks/pipeline_health.py) and by the
prices server's `GET /v1/health`, each with its own AdminClient.

Kafka's transient answers right after a broker start (COORDINATOR_LOAD_IN_PROGRESS,
NOT_COORDINATOR, timeouts, ...) are retried for up to `timeout_s`; a lasting error is raised.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterable, Mapping

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupLag:
    """Consumer-group position on one topic, summed over its partitions."""
    group: str
    topic: str
    committed: int                # sum of committed offsets (low watermark where none committed)
    end: int                      # sum of end offsets (last stable offset)

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


def retrying(what: str, call, timeout_s: float, sleep=None):
    """`call()`, again while Kafka answers with a retriable error, for up to `timeout_s`."""
    from confluent_kafka import KafkaError, KafkaException

    sleep = sleep or time.sleep
    transient = {KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
                 KafkaError.NOT_COORDINATOR, KafkaError.LEADER_NOT_AVAILABLE,
                 KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.REQUEST_TIMED_OUT,
                 KafkaError._TIMED_OUT, KafkaError._TRANSPORT}
    deadline = time.monotonic() + timeout_s
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
            sleep(delay)
            delay = min(delay * 2, 4.0)


class LagReader:
    """Offsets and lags through one AdminClient (`admin`), each call bounded by `timeout_s`."""

    def __init__(self, admin, timeout_s: float = 15.0, sleep=None):
        self.admin = admin
        self.timeout_s = timeout_s
        self.sleep = sleep

    def _retrying(self, what: str, call):
        return retrying(what, call, self.timeout_s, self.sleep)

    def partitions(self, topics: Iterable[str]) -> list:
        from confluent_kafka import TopicPartition

        meta = self.admin.list_topics(timeout=self.timeout_s)
        out = []
        for topic in topics:
            if topic in meta.topics and meta.topics[topic].error is None:
                out += [TopicPartition(topic, p) for p in sorted(meta.topics[topic].partitions)]
        return out

    def offsets(self, tps: list, spec) -> dict[tuple[str, int], int]:
        from confluent_kafka import IsolationLevel

        if not tps:
            return {}

        def read():
            futures = self.admin.list_offsets({tp: spec for tp in tps}, isolation_level=IsolationLevel.READ_COMMITTED,
                                              request_timeout=self.timeout_s)
            return {(tp.topic, tp.partition): fut.result().offset for tp, fut in futures.items()}
        return self._retrying("list offsets", read)

    def topic_end_offsets(self, topics: Iterable[str]) -> dict[str, int]:
        """topic -> sum over partitions of the last stable offset (absent topics are left out)."""
        from confluent_kafka.admin import OffsetSpec

        out: dict[str, int] = {}
        for (topic, _), off in self.offsets(self.partitions(topics), OffsetSpec.latest()).items():
            out[topic] = out.get(topic, 0) + off
        return out

    def group_lags(self, groups: Mapping[str, Iterable[str]]) -> list[GroupLag]:
        """{group: topics} -> committed and end offsets per (group, topic). A partition the group
        never committed counts from its low watermark (where `auto.offset.reset=earliest` starts)."""
        from confluent_kafka import ConsumerGroupTopicPartitions
        from confluent_kafka.admin import OffsetSpec

        all_topics = sorted({t for ts in groups.values() for t in ts})
        tps = self.partitions(all_topics)
        ends = self.offsets(tps, OffsetSpec.latest())
        starts = self.offsets(tps, OffsetSpec.earliest())
        out = []
        for group, topics in groups.items():
            topics = set(topics)
            mine = [tp for tp in tps if tp.topic in topics]
            committed: dict[tuple[str, int], int] = {}
            if mine:
                def read(group=group, mine=mine):
                    return self.admin.list_consumer_group_offsets(
                        [ConsumerGroupTopicPartitions(group, mine)],
                        request_timeout=self.timeout_s)[group].result().topic_partitions
                for tp in self._retrying(f"offsets of group {group}", read):
                    if tp.offset >= 0:
                        committed[(tp.topic, tp.partition)] = tp.offset
            for topic in sorted(topics):
                keys = [(tp.topic, tp.partition) for tp in mine if tp.topic == topic]
                if keys:
                    out.append(GroupLag(group=group, topic=topic,
                                        committed=sum(committed.get(k, starts[k]) for k in keys),
                                        end=sum(ends[k] for k in keys)))
        return out


# The streaming daemons' consumer groups and what they read (DESIGN.md programs).
def pipeline_groups(groups: Mapping[str, str] | None = None) -> dict[str, tuple[str, ...]]:
    """{group: topics} for transform, load and archive; `groups` renames a program's group."""
    from common.topics import PIPELINE_EVENTS, RAW_TOPICS, TRANSFORMED_TOPICS

    g = {**DEFAULT_GROUPS, **(groups or {})}
    return {g["transform"]: RAW_TOPICS, g["load"]: TRANSFORMED_TOPICS + (PIPELINE_EVENTS,), g["archive"]: RAW_TOPICS}


DEFAULT_GROUPS = {"transform": "transformer", "load": "loader", "archive": "archiver"}


def lag_report(reader: LagReader, groups: Mapping[str, Iterable[str]] | None = None) -> dict:
    """{"groups": [{group, topic, committed, end, lag}]} for the pipeline's groups, or
    {"error": ...} when Kafka cannot say (a health page must still show the rest)."""
    try:
        lags = reader.group_lags(groups or pipeline_groups())
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return {"groups": [{"group": g.group, "topic": g.topic, "committed": g.committed, "end": g.end, "lag": g.lag}
                       for g in lags]}
