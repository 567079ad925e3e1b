"""Loader: normalized ticks and pipeline events -> Postgres (`cryptopipe load`, group `loader`).

One Kafka batch = one Postgres transaction:
  COPY the ticks into a temp staging table, `INSERT ... ON CONFLICT DO NOTHING` into `ticks`,
  and from the rows that insert actually added (RETURNING) update `candles_1m` (source
  'stream', never a 'rest' row) and `latest_prices` (only when newer). A replayed tick adds no
  row, so it adds nothing to a candle either: the stored result is exactly-once although Kafka
  delivers at-least-once. Pipeline events upsert `stream_sessions` with LEAST/GREATEST, so a
  replay or a reordering changes nothing. Offsets are committed only after the DB commit.
"""
from __future__ import annotations

import io
import json
import logging
import re
import time
from dataclasses import dataclass, field

import psycopg2
import psycopg2.extras
from confluent_kafka import TopicPartition

from common import jsoncodec
from common.codec import BadRecord
from common.codec.dlq import DeadLetter, dead_letter as build_dead_letter, read_dead_letter
from common.codec.events import decode_event, event_exchange
from common.codec.limits import EPOCH_CEILING_MS, EPOCH_FLOOR_MS, PLAIN_DECIMAL, POSITIVE_DECIMAL
from common.codec.raw import fallback_received_ns
from common.db import connect
from common.kafka import make_consumer, make_producer
from common.models import PipelineEvent
from common.settings import get_settings, metrics_port
from common.symbols import CANONICAL_RE
from common.topics import EXCHANGES, PIPELINE_EVENTS, dlq_topic, exchange_of_topic, transformed_topic
from streaming.consumer_loop import (LagReporter, Metrics, advance_past_markers, StopFlag, backoff_delays, base_parser, commit_sync,
                                     log_consumer_errors, next_offsets, safe_reason,
                                     setup_logging, split_errors, start_metrics_server)

log = logging.getLogger("streaming.loader")

COMPONENT = "load"
DEFAULT_GROUP = "loader"
DEFAULT_METRICS_PORT = 9104

# epoch ms bounds for a tick we accept, and the one decimal pattern (common.codec.limits)
MIN_MS, MAX_MS = EPOCH_FLOOR_MS, EPOCH_CEILING_MS
_DECIMAL_RE = re.compile(PLAIN_DECIMAL)
_OPTIONAL = ("bid", "bid_size", "ask", "ask_size", "last_size", "open_24h", "high_24h", "low_24h",
             "volume_24h", "quote_volume_24h")
STAGE_COLUMNS = ("exchange", "symbol", "event_time_ms", "sequence", "price") + _OPTIONAL + ("received_ns",)
MAX_SESSION_REASON = 500


# --------------------------------------------------------------------------- parsing (pure)

_POSITIVE_RE = re.compile(POSITIVE_DECIMAL)
# the price, then every present optional decimal, tab-separated: the whole record in one match
_DECIMALS_RE = re.compile(rf"{POSITIVE_DECIMAL}(?:\t{PLAIN_DECIMAL})*")
_canonical_seen: set[str] = set()          # symbols that passed CANONICAL_RE (bounded: hostile input)
_CANONICAL_SEEN_MAX = 100_000
_INT64 = 2 ** 63 - 1
_MIN_NS, _MAX_NS = MIN_MS * 1_000_000, MAX_MS * 1_000_000


def _int(obj: dict, name: str, lo: int, hi: int, default: int | None = None) -> int:
    value = obj.get(name, default)
    if type(value) is not int:          # bool is an int subclass: rejected too
        raise BadRecord(f"{name} is not an integer")
    if not lo <= value <= hi:
        raise BadRecord(f"{name} out of range")
    return value


def tick_copy_line(value: bytes | None, expected_exchange: str | None = None) -> str:
    """One transformed-topic record -> one line of COPY text for `stage_ticks` (validated).

    Only validated text reaches COPY: canonical symbols, decimal strings and integers contain
    no tab, newline or backslash, so no escaping is needed. Written flat: it runs per record.

    The records come from our transformer, whose adapters already checked every field, so the
    common case costs one regex over all decimals at once (and a set lookup for a symbol seen
    before); only a record that fails it pays for the field-by-field checks that name the field.
    """
    if not value:
        raise BadRecord("empty record")
    try:
        obj = jsoncodec.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRecord(f"malformed JSON: {exc}") from None
    if type(obj) is not dict:
        raise BadRecord("record is not a JSON object")
    exchange = obj.get("exchange")
    if exchange not in EXCHANGES:
        raise BadRecord("unknown exchange")
    if expected_exchange and exchange != expected_exchange:
        raise BadRecord(f"exchange {exchange} on the {expected_exchange} topic")
    symbol = obj.get("symbol")
    if type(symbol) is not str or symbol not in _canonical_seen:     # (a list or dict is unhashable)
        if type(symbol) is not str or not CANONICAL_RE.fullmatch(symbol):
            raise BadRecord("symbol is not canonical BASE-QUOTE")
        if len(_canonical_seen) < _CANONICAL_SEEN_MAX:
            _canonical_seen.add(symbol)
    event_ms = _int(obj, "event_time_ms", MIN_MS, MAX_MS)
    received_ns = _int(obj, "received_ns", _MIN_NS, _MAX_NS)
    sequence = _int(obj, "sequence", 0, _INT64, default=0)
    price = obj.get("price")
    optional = [obj.get(name) for name in _OPTIONAL]
    present = [price, *[v for v in optional if v is not None]]
    try:
        decimals = "\t".join(present)
    except TypeError:                       # a missing price, or a field that is not a string
        decimals = None
    # as many tabs as the join put in: no value carries one of its own (it would pose as a separator)
    if (decimals is None or decimals.count("\t") != len(present) - 1
            or not _DECIMALS_RE.fullmatch(decimals)):
        _reject_decimals(price, optional)
    return "\t".join([exchange, symbol, str(event_ms), str(sequence), price,
                      *["\\N" if v is None else v for v in optional], str(received_ns)])


def _reject_decimals(price, optional: list) -> None:
    """Raises BadRecord naming the first decimal field that is not a valid decimal string."""
    if price is None:
        raise BadRecord("missing price")
    if type(price) is not str or not _POSITIVE_RE.fullmatch(price):
        if type(price) is str and _DECIMAL_RE.fullmatch(price.removeprefix("-")):
            raise BadRecord("price is not positive")
        raise BadRecord("price is not a finite decimal string")
    for name, v in zip(_OPTIONAL, optional):
        if v is not None and (type(v) is not str or not _DECIMAL_RE.fullmatch(v)):
            raise BadRecord(f"{name} is not a finite decimal string")
    raise BadRecord("decimal fields are not finite decimal strings")   # unreachable: the patterns agree


@dataclass
class Session:
    """The merge of one batch's events of one connection (same rules as the SQL upsert)."""
    exchange: str
    first_seen_ns: int
    last_seen_ns: int
    connected_ns: int | None = None
    subscribed_ns: int | None = None
    disconnected_ns: int | None = None
    reason: str | None = None
    symbols: list[str] | None = None     # the shard's symbols (None: all the extractor streams)
    covered_until_ns: int | None = None  # newest time up to which the connection's data is safe

    def add(self, ev: PipelineEvent) -> None:
        self.first_seen_ns = min(self.first_seen_ns, ev.at_ns)
        self.last_seen_ns = max(self.last_seen_ns, ev.at_ns)
        covered = ev.detail.get("covered_until_ns")
        if covered is not None and (self.covered_until_ns is None or covered > self.covered_until_ns):
            self.covered_until_ns = covered
        if ev.kind == "connected":
            self.connected_ns = ev.at_ns if self.connected_ns is None else min(self.connected_ns, ev.at_ns)
            if self.symbols is None and ev.detail.get("symbols") is not None:
                self.symbols = list(ev.detail["symbols"])
        elif ev.kind == "subscribed":
            self.subscribed_ns = ev.at_ns if self.subscribed_ns is None else min(self.subscribed_ns, ev.at_ns)
        elif ev.kind == "disconnected":
            if self.disconnected_ns is None or ev.at_ns < self.disconnected_ns:
                self.disconnected_ns = ev.at_ns
                self.reason = ev.reason[:MAX_SESSION_REASON]


# process-level events (the extractor's spool), not a connection's: they stay in the topic, and
# the connection that stopped reading because of a full spool reports its own `disconnected`
PROCESS_EVENT_KINDS = frozenset({"spool_full", "spool_drained"})


def merge_events(events: list[PipelineEvent]) -> dict[str, Session]:
    sessions: dict[str, Session] = {}
    for ev in events:
        if ev.kind in PROCESS_EVENT_KINDS:
            continue
        s = sessions.get(ev.conn_id)
        if s is None:
            s = sessions[ev.conn_id] = Session(ev.exchange, ev.at_ns, ev.at_ns)
        s.add(ev)
    return sessions


# --------------------------------------------------------------------------- SQL

CREATE_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS stage_ticks (
    exchange text, symbol text, event_time_ms bigint, sequence bigint, price numeric,
    bid numeric, bid_size numeric, ask numeric, ask_size numeric, last_size numeric,
    open_24h numeric, high_24h numeric, low_24h numeric, volume_24h numeric,
    quote_volume_24h numeric, received_ns bigint
) ON COMMIT DELETE ROWS
"""

COPY_STAGE = f"COPY stage_ticks ({', '.join(STAGE_COLUMNS)}) FROM STDIN"

# Ticks first; candles and latest prices only from the rows this statement really inserted
# (RETURNING lists each new row once, duplicates inside the batch included).
MERGE_TICKS = """
WITH ins AS (
    INSERT INTO ticks (exchange, symbol, event_time, sequence, price, bid, bid_size, ask, ask_size,
                       last_size, open_24h, high_24h, low_24h, volume_24h, quote_volume_24h, received_at)
    SELECT exchange, symbol, timestamptz 'epoch' + event_time_ms * interval '1 millisecond', sequence,
           price, bid, bid_size, ask, ask_size, last_size, open_24h, high_24h, low_24h, volume_24h,
           quote_volume_24h, timestamptz 'epoch' + (received_ns / 1000) * interval '1 microsecond'
    FROM stage_ticks
    ON CONFLICT DO NOTHING   -- also skips a duplicate within the batch: the first copy wins
    RETURNING exchange, symbol, event_time, sequence, price
), cnd AS (
    INSERT INTO candles_1m AS c (exchange, symbol, open_time, open, high, low, close, source,
                                 open_event_time, open_sequence, close_event_time, close_sequence, tick_count)
    SELECT exchange, symbol, date_trunc('minute', event_time),
           (array_agg(price ORDER BY event_time, sequence))[1], max(price), min(price),
           (array_agg(price ORDER BY event_time DESC, sequence DESC))[1], 'stream',
           min(event_time), (array_agg(sequence ORDER BY event_time, sequence))[1],
           max(event_time), (array_agg(sequence ORDER BY event_time DESC, sequence DESC))[1], count(*)
    FROM ins
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
    ON CONFLICT (exchange, symbol, open_time) DO UPDATE SET
        open = CASE WHEN (EXCLUDED.open_event_time, EXCLUDED.open_sequence)
                         < (c.open_event_time, coalesce(c.open_sequence, 0))
                    THEN EXCLUDED.open ELSE c.open END,
        open_event_time = CASE WHEN (EXCLUDED.open_event_time, EXCLUDED.open_sequence)
                                    < (c.open_event_time, coalesce(c.open_sequence, 0))
                               THEN EXCLUDED.open_event_time ELSE c.open_event_time END,
        open_sequence = CASE WHEN (EXCLUDED.open_event_time, EXCLUDED.open_sequence)
                                  < (c.open_event_time, coalesce(c.open_sequence, 0))
                             THEN EXCLUDED.open_sequence ELSE c.open_sequence END,
        close = CASE WHEN (EXCLUDED.close_event_time, EXCLUDED.close_sequence)
                          > (c.close_event_time, coalesce(c.close_sequence, 0))
                     THEN EXCLUDED.close ELSE c.close END,
        close_event_time = CASE WHEN (EXCLUDED.close_event_time, EXCLUDED.close_sequence)
                                     > (c.close_event_time, coalesce(c.close_sequence, 0))
                                THEN EXCLUDED.close_event_time ELSE c.close_event_time END,
        close_sequence = CASE WHEN (EXCLUDED.close_event_time, EXCLUDED.close_sequence)
                                   > (c.close_event_time, coalesce(c.close_sequence, 0))
                              THEN EXCLUDED.close_sequence ELSE c.close_sequence END,
        high = GREATEST(c.high, EXCLUDED.high),
        low = LEAST(c.low, EXCLUDED.low),
        tick_count = c.tick_count + EXCLUDED.tick_count,
        updated_at = now()
    WHERE c.source = 'stream'
    RETURNING 1
), lp AS (
    INSERT INTO latest_prices AS l (exchange, symbol, price, event_time)
    SELECT DISTINCT ON (exchange, symbol) exchange, symbol, price, event_time
    FROM ins
    ORDER BY exchange, symbol, event_time DESC, sequence DESC
    ON CONFLICT (exchange, symbol) DO UPDATE SET
        price = EXCLUDED.price, event_time = EXCLUDED.event_time, updated_at = now()
    WHERE EXCLUDED.event_time > l.event_time
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM cnd), (SELECT count(*) FROM lp)
"""

UPSERT_SESSIONS = """
INSERT INTO stream_sessions AS s (conn_id, exchange, connected_at, subscribed_at, last_seen_at,
                                  disconnected_at, reason, symbols, covered_until)
VALUES %s
ON CONFLICT (conn_id) DO UPDATE SET
    symbols = coalesce(s.symbols, EXCLUDED.symbols),
    covered_until = GREATEST(s.covered_until, EXCLUDED.covered_until),
    connected_at = LEAST(s.connected_at, EXCLUDED.connected_at),
    subscribed_at = LEAST(s.subscribed_at, EXCLUDED.subscribed_at),
    last_seen_at = GREATEST(s.last_seen_at, EXCLUDED.last_seen_at),
    disconnected_at = LEAST(s.disconnected_at, EXCLUDED.disconnected_at),
    reason = CASE WHEN EXCLUDED.disconnected_at IS NOT NULL
                       AND (s.disconnected_at IS NULL OR EXCLUDED.disconnected_at < s.disconnected_at)
                  THEN EXCLUDED.reason ELSE s.reason END
"""

INSERT_DEAD_LETTERS = """
INSERT INTO dlq_records (dlq_topic, dlq_partition, dlq_offset, exchange, stage, reason, source_topic,
                         source_partition, source_offset, received_at, symbols, untracked)
VALUES %s
ON CONFLICT (dlq_topic, dlq_partition, dlq_offset) DO NOTHING
"""
_DEAD_LETTER_TEMPLATE = ("(%s, %s, %s, %s, %s, %s, %s, %s, %s, "
                         "timestamptz 'epoch' + %s * interval '1 microsecond', %s::text[], %s)")

_SESSION_TEMPLATE = ("(%s, %s, timestamptz 'epoch' + %s * interval '1 microsecond', "
                     "timestamptz 'epoch' + %s * interval '1 microsecond', "
                     "timestamptz 'epoch' + %s * interval '1 microsecond', "
                     "timestamptz 'epoch' + %s * interval '1 microsecond', %s, %s::text[], "
                     "timestamptz 'epoch' + %s * interval '1 microsecond')")


def _us(ns: int | None) -> int | None:
    return None if ns is None else ns // 1000


@dataclass
class BatchResult:
    ticks_in: int = 0
    ticks_inserted: int = 0
    candles_touched: int = 0
    latest_updated: int = 0
    sessions: int = 0
    dead_letters: int = 0
    partitions_created: int = 0


@dataclass
class TickWriter:
    """Writes batches to Postgres on one connection; reconnects on a broken one."""
    dsn: str | None = None
    _conn: object = None
    _known_days: set = field(default_factory=set)

    def conn(self):
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn)
            with self._conn, self._conn.cursor() as cur:
                cur.execute("SET TIME ZONE 'UTC'")
                cur.execute(CREATE_STAGE)
        return self._conn

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None

    def ensure_partitions(self, day_numbers: set[int]) -> int:
        """Create the daily partitions (days since epoch) not known to exist; own transaction."""
        missing = sorted(day_numbers - self._known_days)
        if not missing:
            return 0
        conn = self.conn()
        with conn, conn.cursor() as cur:
            cur.execute("SELECT ensure_ticks_partitions(ARRAY(SELECT date '1970-01-01' + d FROM unnest(%s::int[]) d))",
                        (missing,))
            created = cur.fetchone()[0]
        self._known_days.update(missing)
        return created

    def write(self, tick_lines: list[str], day_numbers: set[int], sessions: dict[str, Session],
              dead_letters: list[tuple] = ()) -> BatchResult:
        """One transaction: ticks (and their candles and latest prices), sessions, and the rows of
        `dlq_records` (`dead_letter_row` tuples)."""
        result = BatchResult(ticks_in=len(tick_lines), sessions=len(sessions), dead_letters=len(dead_letters))
        if tick_lines:
            result.partitions_created = self.ensure_partitions(day_numbers)
        conn = self.conn()
        try:
            with conn, conn.cursor() as cur:
                if tick_lines:
                    buf = io.StringIO("\n".join(tick_lines) + "\n")
                    cur.copy_expert(COPY_STAGE, buf)
                    cur.execute(MERGE_TICKS)
                    result.ticks_inserted, result.candles_touched, result.latest_updated = cur.fetchone()
                if sessions:
                    rows = [(cid, s.exchange, _us(s.connected_ns if s.connected_ns is not None else s.first_seen_ns),
                             _us(s.subscribed_ns), _us(s.last_seen_ns), _us(s.disconnected_ns), s.reason,
                             s.symbols, _us(s.covered_until_ns))
                            for cid, s in sorted(sessions.items())]
                    psycopg2.extras.execute_values(cur, UPSERT_SESSIONS, rows, template=_SESSION_TEMPLATE,
                                                   page_size=1000)
                if dead_letters:
                    psycopg2.extras.execute_values(cur, INSERT_DEAD_LETTERS, list(dead_letters),
                                                   template=_DEAD_LETTER_TEMPLATE, page_size=1000)
        except (psycopg2.errors.UndefinedTable, psycopg2.errors.CheckViolation):
            # a partition we believed in was dropped (retention: "no partition of relation found
            # for row") or the temp table vanished: forget what we knew and let the retry recreate
            self._known_days.clear()
            self.close()
            raise
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            self.close()
            raise
        return result

    def drop_expired_partitions(self, retention_days: int) -> int:
        conn = self.conn()
        with conn, conn.cursor() as cur:
            cur.execute("SELECT drop_ticks_partitions_before((now() AT TIME ZONE 'UTC')::date - %s)",
                        (retention_days,))
            dropped = cur.fetchone()[0]
        self._known_days.clear()
        return dropped


@dataclass
class Split:
    """One batch, sorted (Loader.split)."""
    lines: list[str] = field(default_factory=list)
    days: set[int] = field(default_factory=set)
    sessions: dict[str, Session] = field(default_factory=dict)
    dead_letters: list[tuple] = field(default_factory=list)     # rows of dlq_records
    bad: list[tuple] = field(default_factory=list)              # (message, reason, exchange or None)


def _headers_or_none(message):
    try:
        return message.headers()
    except Exception:  # noqa: BLE001 - e.g. a header name that is not UTF-8: read as no headers
        return None


def dead_letter_row(message, d: DeadLetter) -> tuple:
    """A `dlq_records` row (INSERT_DEAD_LETTERS order). The receive time is the dead letter's
    own when it names one, else the time Kafka took the dead letter (shortly after receipt)."""
    _kind, ts_ms = message.timestamp()
    received_us = d.received_ns // 1000 if d.received_ns is not None else fallback_received_ns(ts_ms) // 1000
    return (message.topic(), message.partition(), message.offset(), d.exchange, d.stage, d.reason,
            d.source_topic, d.source_partition, d.source_offset, received_us,
            list(d.symbols) if d.symbols else None, d.untracked)


# --------------------------------------------------------------------------- the loop

_RETRYABLE = (psycopg2.OperationalError, psycopg2.InterfaceError, psycopg2.errors.DeadlockDetected,
              psycopg2.errors.SerializationFailure, psycopg2.errors.UndefinedTable,
              psycopg2.errors.CheckViolation)


class Loader:
    def __init__(self, consumer, producer, writer: TickWriter, metrics: Metrics, stop: StopFlag,
                 topic_suffix: str = "", batch_size: int = 5000, poll_timeout: float = 0.5,
                 retention_days: int = 0):
        self.consumer = consumer
        self.producer = producer
        self.writer = writer
        self.metrics = metrics
        self.stop = stop
        self.suffix = topic_suffix
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.retention_days = retention_days
        self.lag = LagReporter(metrics)
        self.events_topic = PIPELINE_EVENTS + topic_suffix
        self._next_retention = 0.0
        self._held: list = []
        self._committed: dict[tuple[str, int], int] = {}
        self._kinds: dict[str, tuple[str, str | None]] = {}

    def topics(self) -> list[str]:
        return ([transformed_topic(e) + self.suffix for e in EXCHANGES] + [self.events_topic]
                + [dlq_topic(e) + self.suffix for e in EXCHANGES])

    # -- one batch
    def split(self, messages: list) -> "Split":
        """Sort one batch into tick lines, sessions, dead-letter rows to record and bad records.
        Whatever one record does (any field, any header, any size), it ends up in exactly one of
        them: nothing it holds can stop the loader."""
        out = Split()
        events: list[PipelineEvent] = []
        per_topic: dict[str, int] = {}
        now_ns = time.time_ns()
        for m in messages:
            topic = m.topic()
            per_topic[topic] = per_topic.get(topic, 0) + 1
            kind, exchange = self._topic_kind(topic)
            try:
                if kind == "events":
                    events.append(decode_event(m.value(), now_ns))
                elif kind == "dlq":      # never dead-lettered again, whatever it holds: recorded as read
                    out.dead_letters.append(dead_letter_row(m, read_dead_letter(_headers_or_none(m), exchange)))
                else:
                    line = tick_copy_line(m.value(), exchange)
                    out.lines.append(line)
                    out.days.add(int(line.split("\t", 3)[2]) // 86_400_000)
            except BadRecord as exc:
                out.bad.append((m, exc.reason, exchange if kind != "events" else event_exchange(m.value(), m.key())))
            except Exception as exc:  # noqa: BLE001 - a record we did not foresee: its DLQ, not our exit
                log.exception("unexpected failure on %s[%d]@%d", topic, m.partition(), m.offset())
                out.bad.append((m, f"loader_error:{type(exc).__name__}",
                                exchange if kind != "events" else event_exchange(m.value(), m.key())))
        for topic, n in per_topic.items():
            self.metrics.consumed(topic, n)
        out.sessions = merge_events(events)
        return out

    def _topic_kind(self, topic: str) -> tuple[str, str | None]:
        """('events' | 'dlq' | 'ticks', exchange); cached per topic."""
        known = self._kinds.get(topic)
        if known is None:
            if topic == self.events_topic:
                known = ("events", None)
            else:
                exchange = exchange_of_topic(topic)
                known = ("dlq" if topic == dlq_topic(exchange) + self.suffix else "ticks", exchange)
            self._kinds[topic] = known
        return known

    def dead_letter(self, bad: list[tuple]) -> None:
        """Bad records to their exchange's DLQ (stage `load`), delivered before offsets move.
        A bad record read from a DLQ topic itself is never dead-lettered again (no loop): it is
        recorded in `dlq_records` by `dead_letter_row` with what could be read of it."""
        counts: dict[str, int] = {}
        for m, reason, exchange in bad:
            if exchange is None:
                # no exchange to route it to: say so loudly (escaped), count it, move on
                log.error("unroutable bad record %s[%d]@%d: %s", m.topic(), m.partition(), m.offset(),
                          safe_reason(reason))
                counts["unroutable"] = counts.get("unroutable", 0) + 1
                continue
            topic = dlq_topic(exchange) + self.suffix
            value, headers = build_dead_letter(m.value(), reason=f"loader: {reason}", stage="load", exchange=exchange,
                                               source_topic=m.topic(), source_partition=m.partition(),
                                               source_offset=m.offset())
            self.producer.produce(topic, value=value, key=m.key(), headers=headers)
            counts[topic] = counts.get(topic, 0) + 1
        if bad:
            remaining = self.producer.flush(30)
            if remaining:
                raise RuntimeError(f"{remaining} DLQ records not delivered; not committing offsets")
        for topic, n in counts.items():      # once per topic and batch, after delivery
            self.metrics.dead_lettered(topic, n)

    def process(self, messages: list) -> BatchResult:
        started = time.monotonic()
        batch = self.split(messages)
        result = self._write_with_retry(batch)
        self.dead_letter(batch.bad)
        held = {(m.topic(), m.partition()) for m in self._held}
        offsets = advance_past_markers(self.consumer, next_offsets(messages), held)
        if commit_sync(self.consumer, offsets):
            self._committed.update({(o.topic, o.partition): o.offset for o in offsets})
        self.metrics.wrote("ticks", result.ticks_inserted)
        self.metrics.wrote("sessions", result.sessions)
        self.metrics.wrote("dead_letters", result.dead_letters)
        self.metrics.batch(len(messages), time.monotonic() - started)
        return result

    def _write_with_retry(self, batch: "Split") -> BatchResult:
        delays = backoff_delays()
        paused = False
        try:
            while True:
                try:
                    return self.writer.write(batch.lines, batch.days, batch.sessions, batch.dead_letters)
                except _RETRYABLE as exc:
                    if self.stop.is_set():
                        raise
                    delay = next(delays)
                    log.warning("DB write failed (%s: %s); retrying in %.1fs", type(exc).__name__,
                                safe_reason(exc, 200), delay)
                    self.metrics.retried()
                    if not paused:
                        self.consumer.pause(self.consumer.assignment())
                        paused = True
                    self._idle(delay)
        finally:
            if paused:
                self.consumer.resume(self.consumer.assignment())

    def _idle(self, seconds: float) -> None:
        """Wait while keeping group membership alive (paused partitions deliver nothing new)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.stop.is_set():
            for m in self.consumer.consume(100, timeout=min(0.5, max(0.0, deadline - time.monotonic()))):
                self._held.append(m)  # fetched before the pause: processed with the next batch

    def commit_idle_positions(self) -> None:
        """Idle, everything returned so far is stored: commit positions that moved past markers only."""
        try:
            positions = self.consumer.position(self.consumer.assignment())
        except Exception:
            return
        ahead = [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in positions
                 if tp.offset >= 0 and tp.offset > self._committed.get((tp.topic, tp.partition), -1)]
        if ahead and commit_sync(self.consumer, ahead):
            self._committed.update({(o.topic, o.partition): o.offset for o in ahead})

    def maybe_retention(self) -> None:
        if not self.retention_days or time.monotonic() < self._next_retention:
            return
        self._next_retention = time.monotonic() + 3600
        try:
            dropped = self.writer.drop_expired_partitions(self.retention_days)
            if dropped:
                log.info("retention: dropped %d ticks partitions older than %d days", dropped,
                         self.retention_days)
        except psycopg2.Error as exc:
            log.warning("retention run failed: %s", safe_reason(exc, 200))
            self.writer.close()

    def run(self) -> int:
        self.consumer.subscribe(self.topics())
        self.metrics.up.labels(COMPONENT).set(1)
        log.info("loading %s", ", ".join(self.topics()))
        try:
            while not self.stop.is_set():
                self.maybe_retention()
                messages = self._held + self.consumer.consume(self.batch_size, timeout=self.poll_timeout)
                self._held = []
                good, errors = split_errors(messages)
                log_consumer_errors(errors, COMPONENT)
                if good:
                    try:
                        self.process(good)
                    except _RETRYABLE as exc:
                        if not self.stop.is_set():
                            raise
                        # stopping while the DB is down: nothing was committed, the next run replays
                        log.warning("stopping with an unwritten batch (%s); offsets not committed",
                                    safe_reason(exc, 200))
                        break
                elif not messages:
                    self.commit_idle_positions()
                self.lag.maybe_report(self.consumer)
        finally:
            self.metrics.up.labels(COMPONENT).set(0)
            self.consumer.close()
            self.writer.close()
        return 0


def main(argv: list[str] | None = None) -> int:
    p = base_parser("cryptopipe load", "normalized ticks and pipeline events -> Postgres",
                    DEFAULT_GROUP, metrics_port(DEFAULT_METRICS_PORT))
    p.add_argument("--topic-suffix", default="", help="suffix of every topic name (tests)")
    p.add_argument("--retention-days", type=int, default=None,
                   help="drop ticks partitions older than this (default: settings; 0 disables)")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    stop = StopFlag().install()
    metrics = Metrics(COMPONENT)
    start_metrics_server(args.metrics_port)
    retention = get_settings().ticks_retention_days if args.retention_days is None else args.retention_days
    loader = Loader(make_consumer(args.group), make_producer(), TickWriter(), metrics, stop,
                    topic_suffix=args.topic_suffix, batch_size=args.batch_size,
                    poll_timeout=args.poll_timeout, retention_days=retention)
    return loader.run()


if __name__ == "__main__":
    raise SystemExit(main())
