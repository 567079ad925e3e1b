"""The pipeline event (`pipeline_events`): one JSON object per connection lifecycle event of an
extractor, key = exchange.

    {"exchange", "conn_id", "kind", "at_ns", "reason", "detail": {...}}

kinds: connected | subscribed | heartbeat | disconnected | stalled | spool_full | spool_drained.
`detail` may carry `symbols` (the connection's shard; canonical symbols) and `covered_until_ns`
(the time up to which every tick the exchange sent on this connection is safely in Kafka or the
spool: see streaming/extractor/transport.py); other detail keys are informational.

Built by the extractors (`encode_event`), validated once by the loader (`decode_event`): a forged
or corrupt event (unknown exchange or kind, a time before 2009 or in the future beyond a few
minutes, a malformed shard) is a BadRecord, so it can never claim coverage that did not exist.
"""
from __future__ import annotations

import json

from common.models import PipelineEvent
from common.symbols import CANONICAL_RE
from common.topics import EXCHANGES

from .errors import BadRecord
from .limits import EPOCH_FLOOR_NS, MAX_PIPELINE_EVENT_AHEAD_NS

MAX_CONN_ID = 200
MAX_REASON = 500
MAX_EVENT_BYTES = 1 << 20
MAX_SCOPE_SYMBOLS = 10_000      # a connection's symbols (shard scope) in its `connected` event


def encode_event(event: PipelineEvent) -> bytes:
    return json.dumps({"exchange": event.exchange, "conn_id": event.conn_id, "kind": event.kind,
                       "at_ns": event.at_ns, "reason": event.reason, "detail": event.detail},
                      separators=(",", ":")).encode()


def _time_ns(value, name: str, now_ns: int) -> int:
    if type(value) is not int:
        raise BadRecord(f"malformed_event:{name}_not_integer")
    if value < EPOCH_FLOOR_NS:
        raise BadRecord(f"impossible_event_time:{name}_before_2009")
    if value > now_ns + MAX_PIPELINE_EVENT_AHEAD_NS:
        raise BadRecord(f"impossible_event_time:{name}_in_the_future")
    return value


def decode_event(value: bytes | None, now_ns: int) -> PipelineEvent:
    """A validated PipelineEvent, or BadRecord. `now_ns`: the reader's clock (future bound)."""
    if not value:
        raise BadRecord("empty_record")
    if len(value) > MAX_EVENT_BYTES:
        raise BadRecord("oversized_event")
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRecord(f"malformed_event:json:{type(exc).__name__}") from None
    if type(obj) is not dict:
        raise BadRecord("malformed_event:not_an_object")
    exchange, kind, conn_id = obj.get("exchange"), obj.get("kind"), obj.get("conn_id")
    if exchange not in EXCHANGES:
        raise BadRecord("unknown_exchange")
    if kind not in PipelineEvent.KINDS:
        raise BadRecord("unknown_event_kind")
    if type(conn_id) is not str or not 0 < len(conn_id) <= MAX_CONN_ID or not conn_id.isprintable():
        raise BadRecord("bad_conn_id")
    at_ns = _time_ns(obj.get("at_ns"), "at_ns", now_ns)
    reason = obj.get("reason", "")
    if type(reason) is not str:
        raise BadRecord("malformed_event:reason_not_a_string")
    detail = obj.get("detail") or {}
    if type(detail) is not dict:
        raise BadRecord("malformed_event:detail_not_an_object")
    scope = detail.get("symbols")
    if scope is not None and (type(scope) is not list or len(scope) > MAX_SCOPE_SYMBOLS
                              or not all(type(s) is str and CANONICAL_RE.fullmatch(s) for s in scope)):
        raise BadRecord("malformed_event:symbols_not_canonical")
    covered = detail.get("covered_until_ns")
    if covered is not None:
        covered = _time_ns(covered, "covered_until_ns", now_ns)
        if covered > at_ns:
            raise BadRecord("impossible_event_time:covered_after_event")
    return PipelineEvent(exchange=exchange, conn_id=conn_id, kind=kind, at_ns=at_ns, reason=reason[:MAX_REASON],
                         detail=detail)


def event_exchange(value: bytes | None, key: bytes | None) -> str | None:
    """Which exchange's DLQ a bad pipeline event belongs to: its `exchange` field, else its key
    (extractors key events by exchange); None if neither names a known exchange."""
    try:
        exchange = json.loads(value).get("exchange")
    except Exception:  # noqa: BLE001 - any unreadable value: fall back to the key
        exchange = None
    if isinstance(exchange, str) and exchange in EXCHANGES:
        return exchange
    try:
        text = key.decode("ascii") if key else None
    except UnicodeDecodeError:
        text = None
    return text if text in EXCHANGES else None
