"""`python -m cryptopipe.bench.kafka_limit produce|consume ...`: one side of the Kafka limit line,
as its own process (so its CPU is its own): the project's producer and consumer factories
(common.kafka: idempotent, acks=all, lz4; read_committed) moving the records a step of the
benchmark captured (ticks.v1 batches, common.codec.ticks) and nothing else.

    produce --topic T --records FILE --seconds S   produce the records round and round for S seconds,
                                                   then one end marker per partition; flush
    consume --topic T                              read from the start until every partition's end
                                                   marker

Each prints one JSON line: records, ticks (the records' `count` headers), bytes, and its first and
last wall-clock times (epoch seconds).
"""
from __future__ import annotations

import json
import pickle
import sys
import time

END = "bench_end"


def _count(headers) -> int:
    for name, value in headers or ():
        if name == "count":
            return int(value)
    return 0


def produce(topic: str, records_path: str, seconds: float) -> dict:
    from common.kafka import make_producer

    with open(records_path, "rb") as f:
        records = pickle.load(f)
    producer = make_producer({"client.id": "bench-kafka-limit"})
    partitions = len(producer.list_topics(topic, timeout=10).topics[topic].partitions)
    n = ticks = size = 0
    started = time.time()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _topic, partition, value, headers in records:
            while True:
                try:
                    producer.produce(topic, value=value, headers=headers, partition=partition % partitions)
                    break
                except BufferError:          # the local queue is full: let librdkafka send
                    producer.poll(0.05)
            producer.poll(0)
            n += 1
            ticks += _count(headers)
            size += len(value)
            if n % 256 == 0 and time.monotonic() >= deadline:
                break
    for p in range(partitions):
        producer.produce(topic, value=b"", headers=[(END, b"1")], partition=p)
    left = producer.flush(120)
    return {"role": "produce", "records": n, "ticks": ticks, "bytes": size, "first": started, "last": time.time(),
            "undelivered": left, "partitions": partitions}


def consume(topic: str) -> dict:
    from confluent_kafka import TopicPartition

    from common.kafka import make_consumer

    consumer = make_consumer(f"bench-kafka-limit-{int(time.time() * 1000)}")
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    ended: set[int] = set()
    n = ticks = size = 0
    first = last = None
    deadline = time.monotonic() + 600
    while len(ended) < len(parts) and time.monotonic() < deadline:
        for m in consumer.consume(1000, timeout=1.0):
            if m.error() is not None:
                continue
            headers = m.headers() or []
            if headers and headers[0][0] == END:
                ended.add(m.partition())
                continue
            now = time.time()
            first = first or now
            last = now
            n += 1
            ticks += _count(headers)
            size += len(m.value() or b"")
    consumer.close()
    return {"role": "consume", "records": n, "ticks": ticks, "bytes": size, "first": first, "last": last,
            "complete": len(ended) == len(parts)}


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m cryptopipe.bench.kafka_limit")
    p.add_argument("role", choices=("produce", "consume"))
    p.add_argument("--topic", required=True)
    p.add_argument("--records")
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args(argv)
    out = produce(args.topic, args.records, args.seconds) if args.role == "produce" else consume(args.topic)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
