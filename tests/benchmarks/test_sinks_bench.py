"""Micro-benchmarks of the sinks' hot paths (run with --benchmark-enable to get figures;
the normal suite runs each once as a smoke test)."""
import itertools
import json
import uuid
from decimal import Decimal

import pytest

from common.models import Tick
from streaming.archiver import ObjectCutter, Rotation, archive_line
from streaming.consumer_loop import Metrics
from common.codec.ticks import decode_lines, encode_batches, tick_line
from streaming.loader import Batch, TickWriter
from streaming.symbol_metadata import SymbolMetadata
from streaming.transformer import Router
from tests.conftest import SAMPLES
from tests.unit.streaming.kafka_fakes import FakeMessage

BATCH = 5000
RECEIVED_NS = 1_795_000_000_000_000_000


@pytest.mark.integration
def test_loader_batch_write(benchmark, stack):
    """One loader batch: 5000 new ticks of 50 symbols -> COPY + plain INSERT + candles/latest_prices."""
    writer = TickWriter()
    symbols = [f"B{uuid.uuid4().hex[:7].upper()}-USDT" for _ in range(50)]
    counter = itertools.count()
    base_ms = 1_795_000_000_000

    def batch():
        n = next(counter)
        ticks = [Tick("binance", symbols[i % 50], base_ms + n * BATCH + i, Decimal("100.25") + i,
                      RECEIVED_NS + i, volume_24h=Decimal("12.5")) for i in range(BATCH)]
        lines = [tick_line(t) for t in ticks]
        return (Batch(lines=lines, days={base_ms // 86_400_000}),), {}

    result = benchmark.pedantic(writer.write, setup=batch, rounds=5, iterations=1)
    assert result.ticks_inserted == BATCH
    writer.close()


def test_loader_record_validation(benchmark):
    """ticks.v1 records (5000 ticks) -> validated COPY lines (the loader's per-tick Python cost)."""
    ticks = [Tick("kucoin", "BTC-USDT", 1_795_000_000_000 + i, Decimal("67220.01"), RECEIVED_NS, sequence=i,
                  bid=Decimal("67220"), ask=Decimal("67220.02"), bid_size=Decimal("1.5"),
                  ask_size=Decimal("0.2")) for i in range(BATCH)]
    records = encode_batches([tick_line(t) for t in ticks])
    lines = benchmark(lambda: [line for v, h in records for line in decode_lines(v, h, "kucoin")])
    assert len(lines) == BATCH


class CountingProducer:
    def __init__(self):
        self.n = 0

    def produce(self, topic, value=None, key=None, headers=None, partition=None):
        self.n += 1

    def poll(self, _t=0):
        return 0


def test_transformer_parse_and_route(benchmark):
    """Raw !miniTicker@arr frames -> adapter parse -> ticks.v1 lines -> one record per partition (no broker)."""
    frame = (SAMPLES / "binance-miniTicker-arr-2022-10-14.json").read_bytes().strip()
    symbols = {e["s"]: f"{e['s'][:-4]}-{e['s'][-4:]}" if e["s"].endswith("USDT") else f"{e['s'][:-3]}-{e['s'][-3:]}"
               for e in json.loads(frame)}
    meta = SymbolMetadata(lambda: symbols)
    meta.load()
    producer = CountingProducer()
    router = Router(producer, Metrics("transform"), meta, partitions=lambda topic: 3)
    msgs = [FakeMessage("binance_raw_data", 0, i, frame, b"c", [("received_ns", str(RECEIVED_NS).encode())])
            for i in range(50)]

    def run():
        for m in msgs:
            router.route(m)
        router.flush()

    benchmark(run)
    assert router.ticks_out >= 50 * 40 and router.dlq_out == 0


@pytest.mark.integration
def test_transformer_produce_to_kafka(benchmark, stack):
    """5000 ticks as ticks.v1 records through a real idempotent librdkafka producer to a scratch topic."""
    from common.kafka import make_admin, make_producer
    from confluent_kafka.admin import NewTopic

    topic = "bench_transformed_" + uuid.uuid4().hex[:8]
    admin = make_admin()          # keep a reference: the futures die with their client
    for f in admin.create_topics([NewTopic(topic, 3, 1)]).values():
        f.result()
    producer = make_producer()
    records = encode_batches([tick_line(Tick("binance", "BTC-USDT", 1_795_000_000_000 + i, Decimal("67220.01"),
                                             RECEIVED_NS)) for i in range(BATCH)])

    def run():
        for value, headers in records:
            producer.produce(topic, value=value, headers=headers, partition=0)
        assert producer.flush(60) == 0

    try:
        benchmark(run)
    finally:
        for f in admin.delete_topics([topic]).values():
            f.exception()


def test_archiver_line_and_cut(benchmark):
    """Raw record -> archive JSON line -> object cutter, 5000 records."""
    frame = b'{"stream":"!miniTicker@arr","data":[' + b'{"e":"24hrMiniTicker","E":1665778598150,"s":"ETHBTC","c":"0.06778000"},' * 3 + b"{}]}"
    headers = [("received_ns", str(RECEIVED_NS).encode()), ("conn_id", b"c1"), ("exchange", b"binance")]

    def run():
        cutter = ObjectCutter(Rotation(50_000, 10**9, 3600))
        for i in range(BATCH):
            cutter.add("binance_raw_data", 0, i, RECEIVED_NS + i,
                       archive_line("binance_raw_data", 0, i, b"c1", frame, headers, 0, RECEIVED_NS + i))
        cutter.close_all()
        return cutter.take_closed()[0]

    obj = benchmark(run)
    assert obj.count == BATCH
    assert len(obj.body()) > 0
