"""Kafka topic names (DESIGN.md) and their layout."""
from __future__ import annotations

from common.exchanges import EXCHANGES  # noqa: F401 - the registry's names, re-exported for the topics' users

PIPELINE_EVENTS = "pipeline_events"


def raw_topic(exchange: str) -> str:
    return f"{exchange}_raw_data"


def transformed_topic(exchange: str) -> str:
    return f"{exchange}_transformed_data"


def dlq_topic(exchange: str) -> str:
    return f"{exchange}_dlq"


def exchange_of_topic(topic: str) -> str:
    exchange = topic.split("_", 1)[0]
    if exchange not in EXCHANGES:
        raise ValueError(f"topic {topic!r} belongs to no known exchange")
    return exchange


RAW_TOPICS = tuple(raw_topic(e) for e in EXCHANGES)
TRANSFORMED_TOPICS = tuple(transformed_topic(e) for e in EXCHANGES)
DLQ_TOPICS = tuple(dlq_topic(e) for e in EXCHANGES)
ALL_TOPICS = RAW_TOPICS + TRANSFORMED_TOPICS + DLQ_TOPICS + (PIPELINE_EVENTS,)


def topic_specs(partitions: int, raw_retention_ms: int, min_insync: int = 1) -> dict[str, dict]:
    """Topic -> {partitions, config}. Raw and transformed topics get `partitions`; the rest 1.
    `min_insync`: the replicas a write needs before it is acknowledged (acks=all)."""
    isr = {"min.insync.replicas": str(min_insync)}
    specs = {}
    for t in RAW_TOPICS + TRANSFORMED_TOPICS:
        specs[t] = {"partitions": partitions,
                    "config": {"retention.ms": str(raw_retention_ms), "compression.type": "producer", **isr}}
    for t in DLQ_TOPICS:
        specs[t] = {"partitions": 1, "config": {"retention.ms": str(30 * 24 * 3600 * 1000), **isr}}
    specs[PIPELINE_EVENTS] = {"partitions": 1, "config": {"retention.ms": str(30 * 24 * 3600 * 1000), **isr}}
    return specs
