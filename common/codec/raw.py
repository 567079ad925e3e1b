"""The raw record (`<exchange>_raw_data`): frames exactly as received, keyed by the connection id.

One frame per record (Binance: a frame already holds every changed symbol), or a batch of
frames (KuCoin sends one frame per tick: `raw_batch`): the frames byte for byte, joined by
"\n". A frame that itself holds a newline byte is never batched (it travels alone), so a batch
splits back into exactly `count` frames. Headers:

    received_ns       epoch nanoseconds at which the extractor read the (first) frame
    last_received_ns  ... the last frame of a batch (batches only)
    count             frames in the record (batches only; absent = 1)
    conn_id           the websocket connection (as in `pipeline_events` and `stream_sessions`)
    exchange          the exchange name

Built by the extractors (`raw_headers`, `raw_batch`), read by the transformer (`read_raw_meta`,
`frames_of`) and the archiver. A record whose headers do not hold is not ours (or is corrupt):
the transformer dead-letters it; the archiver still archives its bytes (the archive is raw).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import BadRecord
from .headers import header_map, int_header, text_header
from .limits import EPOCH_CEILING_NS, EPOCH_FLOOR_NS

RECEIVED_NS = "received_ns"
LAST_RECEIVED_NS = "last_received_ns"
COUNT = "count"
CONN_ID = "conn_id"
EXCHANGE = "exchange"
MAX_FRAMES = 100_000


@dataclass(frozen=True, slots=True)
class RawMeta:
    received_ns: int
    conn_id: str | None
    count: int = 1                 # frames in the record


def raw_headers(received_ns: int, conn_id: str, exchange: str) -> list[tuple[str, bytes]]:
    return [(RECEIVED_NS, str(received_ns).encode()), (CONN_ID, conn_id.encode()), (EXCHANGE, exchange.encode())]


def raw_batch(frames: list[bytes], first_ns: int, last_ns: int, conn_id: str,
              exchange: str) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(value, headers) of a batch of frames (none of which holds a newline byte)."""
    return b"\n".join(frames), [(RECEIVED_NS, str(first_ns).encode()), (LAST_RECEIVED_NS, str(last_ns).encode()),
                                (COUNT, str(len(frames)).encode()), (CONN_ID, conn_id.encode()),
                                (EXCHANGE, exchange.encode())]


def read_raw_meta(headers) -> RawMeta:
    """Validated headers of a raw record; BadRecord when they are missing, repeated, non-numeric,
    out of range or oversized."""
    h = header_map(headers)
    received_ns = int_header(h, RECEIVED_NS, EPOCH_FLOOR_NS, EPOCH_CEILING_NS)
    count = int_header(h, COUNT, 1, MAX_FRAMES + 1) if COUNT in h else 1
    return RawMeta(received_ns, text_header(h, CONN_ID, required=False), count)


def frames_of(value: bytes | None, meta: RawMeta) -> list[bytes]:
    """The frames of a raw record; BadRecord when a batch does not split into `count` frames."""
    value = value or b""
    if meta.count == 1:
        return [value]
    frames = value.split(b"\n")
    if len(frames) != meta.count:
        raise BadRecord(f"frame_count_mismatch:{len(frames)}!={meta.count}")
    return frames


def fallback_received_ns(kafka_ts_ms: int) -> int:
    """The receive time to file a record under when its own header is unusable: the Kafka
    timestamp, clamped into the epoch range (a producer chooses its timestamps too)."""
    ns = max(0, int(kafka_ts_ms)) * 1_000_000
    return min(max(ns, EPOCH_FLOOR_NS), EPOCH_CEILING_NS - 1)
