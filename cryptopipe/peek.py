"""`cryptopipe peek topic NAME [-n N]` — the newest records of a Kafka topic;
`cryptopipe peek s3 [PREFIX] [-n N]` — the newest objects in the bucket;
`cryptopipe peek sql` — the newest prices per exchange from Postgres."""
from __future__ import annotations

import argparse
import json


def peek_topic(topic: str, n: int) -> int:
    import uuid

    from confluent_kafka import TopicPartition

    from common.kafka import make_consumer

    consumer = make_consumer(f"peek-{uuid.uuid4()}", {"isolation.level": "read_uncommitted"})
    md = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if md is None or md.error is not None:
        print(f"no topic {topic!r}")
        return 2
    records = []
    for p in md.partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        start = max(low, high - n)
        if high <= start:
            continue
        consumer.assign([TopicPartition(topic, p, start)])
        while True:
            msg = consumer.poll(2.0)
            if msg is None or msg.error():
                break
            records.append(msg)
            if msg.offset() >= high - 1:
                break
    consumer.close()
    records.sort(key=lambda m: m.timestamp()[1])
    for msg in records[-n:]:
        print(json.dumps(describe(topic, msg), ensure_ascii=True))
    return 0


def describe(topic: str, msg) -> dict:
    """One record for a person: the transformed topics' batches decoded (common.codec.ticks) into
    one object per tick, decimals as strings; other records as text (the first 2,000 bytes)."""
    from common.codec import BadRecord
    from common.codec.ticks import COLUMNS, NULL, decode_lines

    headers = {k: (v.decode("utf-8", "replace") if v is not None else None) for k, v in (msg.headers() or [])}
    value = msg.value() or b""
    out = {"partition": msg.partition(), "offset": msg.offset(),
           "key": (msg.key() or b"").decode("utf-8", "replace"), "headers": headers}
    if headers.get("fmt") == "ticks.v1":
        try:
            lines = decode_lines(value, msg.headers(), topic.split("_", 1)[0])
            out["ticks"] = [{k: (None if v == NULL else v) for k, v in zip(COLUMNS, line.split("\t"))}
                            for line in lines]
            return out
        except BadRecord as exc:
            out["undecodable"] = exc.reason
    out["value"] = value[:2000].decode("utf-8", "replace")
    return out


def peek_s3(prefix: str, n: int) -> int:
    from common.s3 import make_s3_client
    from common.settings import get_settings

    s3 = make_s3_client()
    objects = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=get_settings().s3_bucket, Prefix=prefix):
        objects.extend(page.get("Contents", []))
    objects.sort(key=lambda o: o["LastModified"])
    for o in objects[-n:]:
        print(f"{o['LastModified']:%Y-%m-%d %H:%M:%S}  {o['Size']:>10}  s3://{get_settings().s3_bucket}/{o['Key']}")
    print(f"({len(objects)} objects under {prefix!r})")
    return 0


def peek_sql(n: int) -> int:
    from common.db import connect

    conn = connect()
    with conn, conn.cursor() as cur:
        cur.execute("SELECT exchange, symbol, price, event_time FROM latest_prices ORDER BY event_time DESC LIMIT %s",
                    (n,))
        for exchange, symbol, price, event_time in cur.fetchall():
            print(f"{event_time:%Y-%m-%d %H:%M:%S.%f}  {exchange:<8} {symbol:<14} {price}")
        cur.execute("SELECT exchange, count(*), max(event_time) FROM ticks GROUP BY exchange ORDER BY exchange")
        for exchange, count, newest in cur.fetchall():
            print(f"ticks[{exchange}]: {count} rows, newest {newest}")
    conn.close()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cryptopipe peek", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("topic")
    t.add_argument("name")
    t.add_argument("-n", type=int, default=5)
    s = sub.add_parser("s3")
    s.add_argument("prefix", nargs="?", default="raw/")
    s.add_argument("-n", type=int, default=20)
    q = sub.add_parser("sql")
    q.add_argument("-n", type=int, default=10)
    args = parser.parse_args(argv)
    if args.what == "topic":
        return peek_topic(args.name, args.n)
    if args.what == "s3":
        return peek_s3(args.prefix, args.n)
    return peek_sql(args.n)
