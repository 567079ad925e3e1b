"""The raw record (`<exchange>_raw_data`): the frame exactly as received (value), keyed by the
connection id, with headers

    received_ns  epoch nanoseconds at which the extractor read the frame (decimal ASCII)
    conn_id      the websocket connection (as in `pipeline_events` and `stream_sessions`)
    exchange     the exchange name

Built by the extractors (`raw_headers`), read by the transformer and the archiver
(`read_raw_meta`). A record whose headers do not hold is not ours (or is corrupt): the
transformer dead-letters it; the archiver still archives its bytes (the archive is raw).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import BadRecord
from .headers import header_map, int_header, text_header
from .limits import EPOCH_CEILING_NS, EPOCH_FLOOR_NS

RECEIVED_NS = "received_ns"
CONN_ID = "conn_id"
EXCHANGE = "exchange"


@dataclass(frozen=True, slots=True)
class RawMeta:
    received_ns: int
    conn_id: str | None


def raw_headers(received_ns: int, conn_id: str, exchange: str) -> list[tuple[str, bytes]]:
    return [(RECEIVED_NS, str(received_ns).encode()), (CONN_ID, conn_id.encode()), (EXCHANGE, exchange.encode())]


def read_raw_meta(headers) -> RawMeta:
    """Validated headers of a raw record; BadRecord when they are missing, repeated, non-numeric,
    out of range or oversized."""
    h = header_map(headers)
    received_ns = int_header(h, RECEIVED_NS, EPOCH_FLOOR_NS, EPOCH_CEILING_NS)
    return RawMeta(received_ns, text_header(h, CONN_ID, required=False))


def fallback_received_ns(kafka_ts_ms: int) -> int:
    """The receive time to file a record under when its own header is unusable: the Kafka
    timestamp, clamped into the epoch range (a producer chooses its timestamps too)."""
    ns = max(0, int(kafka_ts_ms)) * 1_000_000
    return min(max(ns, EPOCH_FLOOR_NS), EPOCH_CEILING_NS - 1)
