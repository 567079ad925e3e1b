"""Micro-benchmark of a Kafka batch consume with the project's client factory (common.kafka) on the
real broker: one batch of 5,000 transformed ticks (ticks.v1 records), read and validated (the
loader's input hop), per round, on a private topic. Run with `--benchmark-enable` to measure. The produce side is
test_sinks_bench.py::test_transformer_produce_to_kafka."""
from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import NewTopic

from common.codec.ticks import decode_lines, encode_batches, tick_line
from common.kafka import make_admin, make_consumer, make_producer
from common.models import Tick

pytestmark = pytest.mark.integration

BATCH = 5_000  # the daemons' default --batch-size


def _records(n: int) -> list[tuple[bytes, list]]:
    """n ticks as the transformer writes them (one partition's ticks.v1 records)."""
    return encode_batches([tick_line(Tick("kucoin", f"B{i % 500}-USDT", 1_795_000_000_000 + i,
                                          price=Decimal("0.0000001141"), received_ns=1_795_000_000_000_000_000 + i,
                                          sequence=i)) for i in range(n)])


@pytest.fixture(scope="module")
def topic(stack):
    name = f"bench_micro_{uuid.uuid4().hex[:10]}"
    admin = make_admin()
    for f in admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1)],
                                 operation_timeout=30).values():
        f.result()
    yield name
    for f in admin.delete_topics([name], operation_timeout=30).values():
        try:
            f.result()
        except Exception:  # noqa: BLE001 - clean-up only
            pass


def test_kafka_batch_consume(benchmark, topic):
    producer = make_producer()
    records = _records(BATCH)
    rounds = 5
    for _ in range(rounds):
        for value, headers in records:
            producer.produce(topic, value=value, headers=headers, partition=0)
    assert producer.flush(60) == 0
    consumer = make_consumer(f"bench-micro-{uuid.uuid4().hex[:8]}")
    md = consumer.list_topics(topic, timeout=10).topics[topic]
    parts = [TopicPartition(topic, p, 0) for p in md.partitions]
    consumer.assign(parts)

    def consume_batch() -> int:
        got = 0
        while got < BATCH:
            msgs = consumer.consume(len(records), timeout=5)
            assert msgs, "the topic ran dry before a full batch"
            for m in msgs:
                assert m.error() is None
                got += len(decode_lines(m.value(), m.headers(), "kucoin"))
        return got

    try:
        # every round reads one batch: at most `rounds` rounds, so the topic never runs dry
        got = benchmark.pedantic(consume_batch, rounds=rounds - 1, iterations=1, warmup_rounds=0)
    finally:
        consumer.close()
    assert got == BATCH
