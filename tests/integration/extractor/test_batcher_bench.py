"""The Batcher (producer linger/batch) measured on the real broker: added latency from produce()
to the broker's acknowledgement at KuCoin-like traffic (one small frame per tick), per linger.

A measurement, not a timed assertion: run with `-s` to read the figures; the test asserts only
that every frame was acknowledged, in order. `--benchmark-enable` adds pytest-benchmark's timing.
"""
from __future__ import annotations

import statistics
import time
import uuid

import pytest
from confluent_kafka.admin import NewTopic

from common.kafka import make_producer
from streaming.extractor.sink import KafkaSink
from streaming.extractor.spool import Record, Spool

pytestmark = pytest.mark.integration

FRAME = (b'{"topic":"/market/ticker:all","type":"message","subject":"BTC-USDT","data":{"bestAsk":"67218.7",'
         b'"bestAskSize":"1.92318539","bestBid":"67218.6","bestBidSize":"0.01045638","price":"67220",'
         b'"sequence":"14691455768","size":"0.00004316","time":1729757723612}}')


class _Hist:
    def __init__(self):
        self.values: list[float] = []

    def observe(self, v: float) -> None:
        self.values.append(v)


class _Metrics:
    def __init__(self):
        self.delivery = _Hist()
        self.spool_bytes = self.pending = self.produce_errors = type("G", (), {"set": lambda *a: None,
                                                                              "inc": lambda *a: None})()


def _measure(topic: str, tmp_path, linger_ms: int, rate: int, seconds: float) -> dict:
    producer = make_producer({"linger.ms": linger_ms})
    for _ in range(100):                       # warm up: producer id, metadata, connections
        producer.produce(topic, value=FRAME, key=b"bench")
    producer.flush(30)
    metrics = _Metrics()
    sink = KafkaSink(producer, Spool(tmp_path / f"spool-{linger_ms}"), metrics, stuck_after_s=30)
    n = int(rate * seconds)
    began = time.monotonic()
    for i in range(n):
        due = began + i / rate
        while time.monotonic() < due:
            sink.poll()
            time.sleep(0.0005)
        sink.offer(Record(topic, b"bench", FRAME, [("received_ns", str(time.time_ns()).encode())]))
    sink.close(timeout=30)
    lat = sorted(metrics.delivery.values)
    return {"linger_ms": linger_ms, "frames": n, "acked": len(lat),
            "p50_ms": round(statistics.median(lat) * 1000, 2),
            "p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 2), "max_ms": round(lat[-1] * 1000, 2)}


def test_batcher_latency_by_linger(stack, kafka_admin, tmp_path, benchmark):
    topic = f"bench_extractor_{uuid.uuid4().hex[:8]}"
    kafka_admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    try:
        results = benchmark.pedantic(
            lambda: [_measure(topic, tmp_path, linger, rate=2000, seconds=2.0) for linger in (0, 5, 20)],
            rounds=1, iterations=1)
        for r in results:
            print("BATCHER", r)
            assert r["acked"] == r["frames"]
    finally:
        kafka_admin.delete_topics([topic])
