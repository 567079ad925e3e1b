"""What one loader batch holds, sorted (pure: no Kafka client, no database).

- ticks (`<ex>_transformed_data`, common.codec.ticks `ticks.v1`): validated COPY lines;
- pipeline events (common.codec.events): merged per connection into `Session`s;
- dead letters (`<ex>_dlq`, common.codec.dlq): rows of `dlq_records`, never dead-lettered again;
- anything a decoder refuses: (message, reason, exchange) for the stage's own dead letter.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from common.codec import BadRecord
from common.codec.dlq import DeadLetter, read_dead_letter
from common.codec.events import decode_event, event_exchange
from common.codec.raw import fallback_received_ns
from common.codec.ticks import decode_lines, event_ms_of
from common.models import PipelineEvent

log = logging.getLogger("streaming.loader")

MAX_SESSION_REASON = 500
# process-level events (the extractor's spool), not a connection's: they stay in the topic, and
# the connection that stopped reading because of a full spool reports its own `disconnected`
PROCESS_EVENT_KINDS = frozenset({"spool_full", "spool_drained"})


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


@dataclass
class Batch:
    """One batch, sorted."""
    lines: list[str] = field(default_factory=list)            # COPY text of the ticks
    days: set[int] = field(default_factory=set)               # days since epoch the ticks fall on
    sessions: dict[str, Session] = field(default_factory=dict)
    dead_letters: list[tuple] = field(default_factory=list)   # rows of dlq_records
    bad: list[tuple] = field(default_factory=list)            # (message, reason, exchange or None)


def dead_letter_row(message, d: DeadLetter) -> tuple:
    """A `dlq_records` row (sql.INSERT_DEAD_LETTERS order). The receive time is the dead letter's
    own when it names one, else the time Kafka took the dead letter (shortly after receipt)."""
    _kind, ts_ms = message.timestamp()
    received_us = d.received_ns // 1000 if d.received_ns is not None else fallback_received_ns(ts_ms) // 1000
    return (message.topic(), message.partition(), message.offset(), d.exchange, d.stage, d.reason,
            d.source_topic, d.source_partition, d.source_offset, received_us,
            list(d.symbols) if d.symbols else None, d.untracked)


def _headers_or_none(message):
    try:
        return message.headers()
    except Exception:  # noqa: BLE001 - e.g. a header name that is not UTF-8: read as no headers
        return None


def sort_batch(messages: list, kind_of, now_ns: int) -> Batch:
    """Sort `messages` by their topic's kind (`kind_of(topic) -> ('ticks'|'events'|'dlq', exchange)`).
    Whatever one record holds (any field, any header, any size), it ends up in exactly one place:
    nothing it holds can stop the loader."""
    out = Batch()
    events: list[PipelineEvent] = []
    for m in messages:
        kind, exchange = kind_of(m.topic())
        try:
            if kind == "ticks":
                lines = decode_lines(m.value(), m.headers(), exchange)
                out.lines += lines
                out.days.update(event_ms_of(line) // 86_400_000 for line in lines)
            elif kind == "events":
                events.append(decode_event(m.value(), now_ns))
            else:                       # a dead letter: recorded as read, never dead-lettered again
                out.dead_letters.append(dead_letter_row(m, read_dead_letter(_headers_or_none(m), exchange)))
        except BadRecord as exc:
            out.bad.append((m, exc.reason, exchange if kind != "events" else event_exchange(m.value(), m.key())))
        except Exception as exc:  # noqa: BLE001 - a record we did not foresee: its DLQ, not our exit
            log.exception("unexpected failure on %s[%d]@%d", m.topic(), m.partition(), m.offset())
            out.bad.append((m, f"loader_error:{type(exc).__name__}",
                            exchange if kind != "events" else event_exchange(m.value(), m.key())))
    out.sessions = merge_events(events)
    return out
