"""Transformer: raw frames -> canonical ticks (`cryptopipe transform`, group `transformer`).

Exactly-once between the topics with Kafka transactions: each consumed batch is parsed, its
ticks and dead-letter records are produced, and the batch's input offsets are sent to the same
transaction (`send_offsets_to_transaction`), which then commits atomically. A crash or an abort
leaves nothing visible to `read_committed` readers (the loader), and the batch is consumed again
from the committed offsets. A restarted instance with the same `transactional.id` fences its
predecessor's open transaction at once (`init_transactions`), and the consumer group metadata
in the transaction fences zombies after a rebalance (KIP-447), so two instances in one group
split the partitions without doubling a tick.

Parsing is the exchange plugs' (`common.exchanges`, with the symbol maps of
`streaming.symbol_metadata`); this module only routes:
ticks -> `<ex>_transformed_data` (common.codec.ticks `ticks.v1`: one record per output partition
per batch, every tick of a symbol in its symbol's partition, in order), anything bad ->
`<ex>_dlq` (common.codec.dlq: the original bytes, the reason and coordinates in headers).
"""
from __future__ import annotations

import logging
import socket
import time

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from common.codec import BadRecord
from common.codec.dlq import dead_letter
from common.codec.raw import frames_of, read_raw_meta
from common.codec.ticks import encode_batches, partition_for, tick_line
from common.exchanges import BadFrame, UnknownSymbol, get_adapter, plug
from common.kafka import make_consumer, make_transactional_producer
from common.settings import metrics_port
from common.topics import EXCHANGES, dlq_topic, exchange_of_topic, raw_topic, transformed_topic
from streaming.consumer_loop import (LagReporter, Metrics, StopFlag, backoff_delays, base_parser,
                                     log_consumer_errors, next_offsets, setup_logging, split_errors,
                                     start_metrics_server, Watchdog)
from streaming.symbol_metadata import SymbolMetadata, symbol_metadata

log = logging.getLogger("streaming.transformer")

COMPONENT = "transform"
DEFAULT_GROUP = "transformer"
DEFAULT_METRICS_PORT = 9103
MAX_REJECT_INDEXES = 50


# --------------------------------------------------------------------------- transform one record

class Router:
    """Turns one raw record into produce calls (ticks or one DLQ record). No transactions here."""

    def __init__(self, producer, metrics: Metrics, metadata: SymbolMetadata | dict[str, SymbolMetadata] | None,
                 topic_suffix: str = "", adapters: dict | None = None, partitions=None):
        self.producer = producer
        # partitions of an output topic (the symbol's partition: common.codec.ticks.partition_for)
        self.partitions = partitions or self._topic_partitions
        self._partition_counts: dict[str, int] = {}
        self._lines: dict[tuple[str, int], list[str]] = {}      # (topic, partition) -> this batch's ticks
        self.metrics = metrics
        self.metadata = metadata
        # {exchange: its symbol metadata}; one SymbolMetadata serves every plug that NEEDS_SYMBOL_MAP
        if isinstance(metadata, SymbolMetadata):
            metadata = {e: metadata for e in EXCHANGES if plug(e).NEEDS_SYMBOL_MAP}
        self.metadata_by_exchange: dict[str, SymbolMetadata] = dict(metadata or {})
        self.suffix = topic_suffix
        self._adapters = adapters or {}
        self._metadata_versions: dict[str, int] = {}
        self.out_topics = {e: transformed_topic(e) + topic_suffix for e in EXCHANGES}
        self.dlq_topics = {e: dlq_topic(e) + topic_suffix for e in EXCHANGES}
        self.ticks_out = 0
        self.dlq_out = 0
        self.dlq_pending: dict[str, int] = {}   # DLQ records per topic since the last report

    def _topic_partitions(self, topic: str) -> int:
        n = self._partition_counts.get(topic)
        if n is None:
            meta = self.producer.list_topics(topic, timeout=30).topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise KafkaException(f"output topic {topic} is not available: {getattr(meta, 'error', None)}")
            n = self._partition_counts[topic] = len(meta.partitions)
        return n

    def flush(self) -> None:
        """Produce the batch's ticks: one record per output partition (ticks.v1), in order."""
        for (topic, partition), lines in self._lines.items():
            for value, headers in encode_batches(lines):
                self._produce(topic, value, None, headers, partition)
        self._lines.clear()

    def discard(self) -> None:
        """Forget the batch's ticks not yet produced (the transaction was aborted)."""
        self._lines.clear()

    def report_dead_letters(self) -> None:
        """Count the batch's DLQ records in the metrics (once per topic, not once per record)."""
        for topic, n in self.dlq_pending.items():
            self.metrics.dead_lettered(topic, n)
        self.dlq_pending.clear()

    def adapter(self, exchange: str):
        meta = self.metadata_by_exchange.get(exchange)
        if meta is not None and self._metadata_versions.get(exchange) != meta.version:
            self._metadata_versions[exchange] = meta.version
            if exchange in self._adapters:
                self._adapters[exchange].update_symbols(meta.symbols)
            else:
                self._adapters[exchange] = get_adapter(exchange, symbol_map=meta.symbols)
        if exchange not in self._adapters:
            self._adapters[exchange] = get_adapter(exchange)
        return self._adapters[exchange]

    def route(self, message) -> None:
        """Ticks of one raw record (one frame, or a batch of frames: common.codec.raw) into the
        batch's ticks, or to the DLQ with its reason. Whatever goes wrong with one frame (headers,
        bytes, an adapter bug, encoding) dead-letters that frame and nothing else: no record can
        stop the transformer."""
        exchange = exchange_of_topic(message.topic())
        try:
            meta = read_raw_meta(message.headers())
            frames = frames_of(message.value(), meta)
        except BadRecord as exc:
            self._dead_letter(message, message.value(), exchange, None, exc.reason)
            return
        except Exception as exc:  # noqa: BLE001 - unreadable headers (e.g. a name that is not UTF-8)
            self._dead_letter(message, message.value(), exchange, None, f"unreadable_record: {type(exc).__name__}")
            return
        batched = meta.count > 1
        for index, frame in enumerate(frames):
            self._route_frame(message, exchange, frame, meta.received_ns, index if batched else None)

    def _route_frame(self, message, exchange: str, raw: bytes, received_ns: int, index: int | None) -> None:
        try:
            ticks, rejects = self._parse(exchange, raw, received_ns)
            # encode everything before keeping anything: a frame is routed all or nothing
            encoded = [(tick.symbol, tick_line(tick)) for tick in ticks]
        except UnknownSymbol as exc:
            # not a market we know (yet): no tracked symbol's data was lost, so no gap either
            self._dead_letter(message, raw, exchange, received_ns, f"{exc.reason}: {exc.symbol!r:.60}", index=index,
                              known=True)
            return
        except BadFrame as exc:
            self._dead_letter(message, raw, exchange, received_ns, str(exc), index=index,
                              symbols=self._lost_symbols(exchange, raw, []))
            return
        except Exception as exc:  # an adapter bug must not stop the stream: the frame is kept in the DLQ
            log.exception("adapter %s failed on %s[%d]@%d", exchange, message.topic(), message.partition(),
                          message.offset())
            self._dead_letter(message, raw, exchange, received_ns, f"adapter_error: {type(exc).__name__}: {exc}",
                              index=index)
            return
        if encoded:
            out = self.out_topics[exchange]
            n = self.partitions(out)
            for symbol, line in encoded:
                self._lines.setdefault((out, partition_for(symbol, n)), []).append(line)
            self.ticks_out += len(encoded)
        if rejects:
            first = rejects[0]
            indexes = ",".join(str(r.index) for r in rejects[:MAX_REJECT_INDEXES])
            reason = f"{len(rejects)} bad element(s); first [{first.index}] {first.error}"
            unknown_only = all(isinstance(r.error, UnknownSymbol) for r in rejects)
            self._dead_letter(message, raw, exchange, received_ns, reason, [("rejected_elements", indexes.encode())],
                              index=index, symbols=self._lost_symbols(exchange, raw, rejects), known=unknown_only)

    def _parse(self, exchange: str, raw: bytes, received_ns: int):
        rejects: list = []
        adapter = self.adapter(exchange)
        ticks = adapter.parse_ticks(raw, received_ns, rejects)
        unknown = any(isinstance(r.error, UnknownSymbol) for r in rejects)
        meta = self.metadata_by_exchange.get(exchange) if unknown else None
        if meta is not None and meta.refresh_on_unknown():
            rejects = []
            ticks = self.adapter(exchange).parse_ticks(raw, received_ns, rejects)
        return ticks, rejects

    def _lost_symbols(self, exchange: str, raw: bytes, rejects: list) -> list[str]:
        try:
            return sorted(self.adapter(exchange).lost_symbols(raw, rejects))
        except Exception:  # noqa: BLE001 - best effort: unknown symbols make the loss exchange-wide
            return []

    def _dead_letter(self, message, value: bytes | None, exchange: str, received_ns: int | None, reason: str,
                     extra: list | None = None, *, index: int | None = None, symbols: list[str] | None = None,
                     known: bool = False) -> None:
        """`value`: the bad bytes (the frame; the whole record when its headers fail); `index`: the
        frame's place in a batch; `symbols`: whose data it held (empty: unknown, i.e.
        exchange-wide); `known`: it held only data of markets we do not track (no gap to repair)."""
        value, headers = dead_letter(
            value, reason=reason, stage="transform", exchange=exchange,
            source_topic=message.topic(), source_partition=message.partition(), source_offset=message.offset(),
            received_ns=received_ns, symbols=symbols, untracked=known)
        if index is not None:
            headers.append(("frame_index", str(index).encode()))
        headers += extra or []
        topic = self.dlq_topics[exchange]
        self._produce(topic, value, message.key(), headers)
        self.dlq_pending[topic] = self.dlq_pending.get(topic, 0) + 1
        self.dlq_out += 1

    def _produce(self, topic: str, value, key, headers, partition: int | None = None) -> None:
        kwargs = {} if partition is None else {"partition": partition}
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, **kwargs)
                return
            except BufferError:  # the producer queue is bounded: wait for deliveries
                self.producer.poll(0.05)



# --------------------------------------------------------------------------- the loop

class Transformer:
    def __init__(self, consumer, producer, router: Router, metrics: Metrics, stop: StopFlag,
                 topics: list[str], batch_size: int = 5000, poll_timeout: float = 0.05):
        self.consumer = consumer
        self.producer = producer
        self.router = router
        self.metrics = metrics
        self.stop = stop
        self.topics = topics
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.lag = LagReporter(metrics)
        self.batches = 0

    # a transaction that has not finished by then is lost anyway (transaction.timeout.ms = 60 s):
    # past it, the watchdog hands the process to supervisord
    STUCK_AFTER_S = 90.0
    # send_offsets_to_transaction ignores its 30 s timeout while the group coordinator is
    # unreachable (librdkafka #5456, open): past 40 s it never returns, so hand over sooner
    SEND_OFFSETS_STUCK_AFTER_S = 40.0
    SEND_OFFSETS_TIMEOUT_S = 30
    watchdog_exit = None          # tests replace the exit

    def process(self, messages: list) -> None:
        """One transaction: produce everything derived from `messages` plus their offsets."""
        with Watchdog(self.STUCK_AFTER_S, "a Kafka transaction", exit=self.watchdog_exit):
            self._process(messages)

    def _process(self, messages: list) -> None:
        started = time.monotonic()
        ticks_before, dlq_before = self.router.ticks_out, self.router.dlq_out
        self.producer.begin_transaction()
        per_topic: dict[str, int] = {}
        try:
            for m in messages:
                self.router.route(m)
                per_topic[m.topic()] = per_topic.get(m.topic(), 0) + 1
            self.router.flush()
            with Watchdog(self.SEND_OFFSETS_STUCK_AFTER_S, "send_offsets_to_transaction (librdkafka #5456)",
                          exit=self.watchdog_exit):
                self.producer.send_offsets_to_transaction(next_offsets(messages),
                                                          self.consumer.consumer_group_metadata(),
                                                          self.SEND_OFFSETS_TIMEOUT_S)
            self._commit()
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.txn_requires_abort():
                log.warning("transaction aborted (%s); re-reading the batch", err)
                self.producer.abort_transaction()
                self.router.discard()
                self._rewind(messages)
                self.router.ticks_out, self.router.dlq_out = ticks_before, dlq_before
                self.router.dlq_pending.clear()      # aborted: those DLQ records do not exist
                return
            raise  # fatal (e.g. fenced by a newer instance with our transactional.id): exit, restart
        self.batches += 1
        for topic, n in per_topic.items():
            self.metrics.consumed(topic, n)
        self.metrics.wrote("ticks", self.router.ticks_out - ticks_before)
        self.router.report_dead_letters()
        self.metrics.batch(len(messages), time.monotonic() - started)

    def _commit(self) -> None:
        for delay in backoff_delays(0.2, 5.0):
            try:
                self.producer.commit_transaction(30)
                return
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError) and err.retriable() and not self.stop.is_set():
                    log.warning("commit_transaction retriable error (%s); retrying", err)
                    time.sleep(delay)
                    continue
                raise

    def _rewind(self, messages: list) -> None:
        """Seek the batch's partitions back to their committed offsets (the aborted output is gone)."""
        parts = [TopicPartition(tp.topic, tp.partition) for tp in next_offsets(messages)]
        for tp in self.consumer.committed(parts, timeout=30):
            if (tp.topic, tp.partition) in {(a.topic, a.partition) for a in self.consumer.assignment()}:
                offset = tp.offset if tp.offset >= 0 else 0  # no commit yet: from the beginning
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def run(self) -> int:
        self.producer.init_transactions(60)
        self.consumer.subscribe(self.topics)
        self.metrics.up.labels(COMPONENT).set(1)
        log.info("transforming %s", ", ".join(self.topics))
        for metadata in set(self.router.metadata_by_exchange.values()):
            metadata.start_scheduled_refresh(self.stop)
        try:
            while not self.stop.is_set():
                messages = self.consumer.consume(self.batch_size, timeout=self.poll_timeout)
                good, errors = split_errors(messages)
                log_consumer_errors(errors, COMPONENT)
                if good:
                    self.process(good)
                self.lag.maybe_report(self.consumer)
        finally:
            self.metrics.up.labels(COMPONENT).set(0)
            self.consumer.close()
            self.producer.flush(10)
        return 0


def default_transactional_id(group: str, instance: str) -> str:
    return f"cryptopipe-{group}-{socket.gethostname()}-{instance}"


def main(argv: list[str] | None = None) -> int:
    p = base_parser("cryptopipe transform", "raw topics -> normalized ticks (+ DLQ)", DEFAULT_GROUP,
                    metrics_port(DEFAULT_METRICS_PORT))
    p.add_argument("--topic-suffix", default="", help="suffix of every topic name (tests)")
    p.add_argument("--exchanges", default=",".join(EXCHANGES), help="comma-separated exchanges to transform")
    p.add_argument("--instance", default="0",
                   help="instance name, unique per running transformer of a group: it makes the stable "
                        "transactional.id that lets a restart fence its crashed predecessor at once")
    for name in EXCHANGES:
        if plug(name).NEEDS_SYMBOL_MAP:
            p.add_argument(f"--{name}-symbols-file", dest=f"symbols_file_{name}", default=None, metavar="PATH",
                           help=f"{name}'s saved market listing or a {{raw: canonical}} map instead of loading "
                                "markets via ccxt")
    p.add_argument("--metadata-refresh", type=float, default=3600.0, help="seconds between symbol refreshes")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    stop = StopFlag().install()
    metrics = Metrics(COMPONENT)
    start_metrics_server(args.metrics_port)
    exchanges = [e.strip() for e in args.exchanges.split(",") if e.strip()]
    unknown = [e for e in exchanges if e not in EXCHANGES]
    if unknown:
        p.error(f"unknown exchange(s): {', '.join(unknown)}")
    metadata = {}
    for exchange in (e for e in exchanges if plug(e).NEEDS_SYMBOL_MAP):
        metadata[exchange] = symbol_metadata(exchange, getattr(args, f"symbols_file_{exchange}"), args.metadata_refresh)
        if not metadata[exchange].load_initial(stop):
            return 0  # stopped before the metadata ever loaded
    consumer = make_consumer(args.group)
    producer = make_transactional_producer(default_transactional_id(args.group, args.instance))
    router = Router(producer, metrics, metadata, topic_suffix=args.topic_suffix)
    topics = [raw_topic(e) + args.topic_suffix for e in exchanges]
    return Transformer(consumer, producer, router, metrics, stop, topics, batch_size=args.batch_size,
                       poll_timeout=args.poll_timeout).run()


if __name__ == "__main__":
    raise SystemExit(main())
