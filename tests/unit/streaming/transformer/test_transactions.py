"""Transformer transaction handling with fakes: one transaction per batch with the input offsets
in it; an abortable failure aborts, rewinds to the committed offsets and produces nothing twice;
a fatal one (fenced) stops the process."""
import json

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streaming.consumer_loop import Metrics, StopFlag
from streaming.transformer import Router, Transformer
from tests.unit.streaming.kafka_fakes import FakeConsumer, FakeMessage, FakeProducer

NS = 1_795_000_000_000_000_000


def frame(seq):
    return json.dumps({"topic": "/market/ticker:all", "type": "message", "subject": "BTC-USDT",
                       "data": {"price": "1.5", "sequence": str(seq), "time": 1_790_983_975_701 + seq,
                                "bestBid": "1", "bestAsk": "2"}}).encode()


class TxnProducer(FakeProducer):
    def __init__(self, fail_commits=0, fatal=False):
        super().__init__()
        self.log, self.fail_commits, self.fatal = [], fail_commits, fatal
        self.pending, self.committed = [], []

    def produce(self, topic, value=None, key=None, headers=None, partition=None):
        self.pending.append((topic, value, key, headers))

    def begin_transaction(self):
        self.log.append("begin")
        self.pending = []

    def send_offsets_to_transaction(self, offsets, _meta, timeout=None):
        self.log.append(("offsets", [(o.topic, o.partition, o.offset) for o in offsets]))

    def commit_transaction(self, timeout=None):
        if self.fail_commits:
            self.fail_commits -= 1
            raise KafkaException(KafkaError(KafkaError._FENCED if self.fatal else KafkaError._TIMED_OUT,
                                            "boom", fatal=self.fatal, txn_requires_abort=not self.fatal))
        self.committed += self.pending
        self.log.append("commit")

    def abort_transaction(self):
        self.pending = []
        self.log.append("abort")


class TxnConsumer(FakeConsumer):
    def __init__(self):
        super().__init__(assignment=[("kucoin_raw_data", 0)])
        self.seeks = []

    def consumer_group_metadata(self):
        return object()

    def committed(self, parts, timeout=None):
        return [TopicPartition(p.topic, p.partition, 3) for p in parts]

    def seek(self, tp):
        self.seeks.append((tp.topic, tp.partition, tp.offset))


def make(producer):
    consumer = TxnConsumer()
    router = Router(producer, Metrics("transform"), None)
    return Transformer(consumer, producer, router, Metrics("transform"), StopFlag(), ["kucoin_raw_data"]), consumer


def batch():
    return [FakeMessage("kucoin_raw_data", 0, 3 + i, frame(i), b"c", [("received_ns", str(NS).encode())])
            for i in range(4)]


def test_one_transaction_per_batch_holds_ticks_and_input_offsets():
    producer = TxnProducer()
    t, _ = make(producer)
    t.process(batch())
    assert producer.log == ["begin", ("offsets", [("kucoin_raw_data", 0, 7)]), "commit"]
    assert {r[0] for r in producer.committed} == {"kucoin_transformed_data"}
    assert committed_ticks(producer) == 4


def committed_ticks(producer) -> int:
    """Ticks in the committed ticks.v1 records (one record per output partition and batch)."""
    return sum(int(dict(r[3])["count"]) for r in producer.committed if r[0] == "kucoin_transformed_data")


def test_abortable_failure_aborts_and_rewinds_then_the_retry_commits_once():
    producer = TxnProducer(fail_commits=1)
    t, consumer = make(producer)
    t.process(batch())
    assert producer.log[-1] == "abort" and producer.committed == []
    assert consumer.seeks == [("kucoin_raw_data", 0, 3)]
    t.process(batch())                      # the re-read batch
    lines = [line for r in producer.committed for line in r[1].split(b"\n")]
    assert committed_ticks(producer) == 4 and len(set(lines)) == 4           # each tick once


def test_fatal_error_stops_the_transformer():
    t, _ = make(TxnProducer(fail_commits=1, fatal=True))
    with pytest.raises(KafkaException):
        t.process(batch())


def test_a_send_offsets_call_that_ignores_its_timeout_hands_the_process_to_supervisord(caplog):
    """librdkafka #5456: send_offsets_to_transaction can block past its timeout while the group
    coordinator is unreachable; the transformer exits (supervisord restarts it, the restart
    fences and aborts the transaction) after SEND_OFFSETS_STUCK_AFTER_S, well before the
    whole-transaction watchdog."""
    import threading

    from streaming.consumer_loop import Watchdog

    released, exits = threading.Event(), []

    class HangingProducer(TxnProducer):
        def send_offsets_to_transaction(self, offsets, _meta, timeout=None):
            self.log.append(("offsets-timeout", timeout))
            released.wait(5)                 # "never" returns, until the watchdog has fired

    producer = HangingProducer()
    t, _ = make(producer)
    t.SEND_OFFSETS_STUCK_AFTER_S, t.STUCK_AFTER_S = 0.2, 3.0
    t.watchdog_exit = lambda code: (exits.append(code), released.set())
    with caplog.at_level("CRITICAL", logger="streaming.watchdog"):
        t.process(batch())
    assert exits == [Watchdog.EXIT_CODE]
    # the short guard fired (the whole-transaction one would name "a Kafka transaction")
    assert [r.getMessage() for r in caplog.records if r.name == "streaming.watchdog"] == [
        "send_offsets_to_transaction (librdkafka #5456) stuck for more than 0 s; exiting so that "
        "supervisord restarts this process"]
    assert ("offsets-timeout", Transformer.SEND_OFFSETS_TIMEOUT_S) in producer.log
