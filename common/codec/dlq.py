"""The dead letter (`<exchange>_dlq`): the bytes a stage could not handle (value, capped) and why
(headers). Built by the transformer and the loader (`dead_letter`), read back by the loader into
`dlq_records` (`read_dead_letter`), where gap detection finds the minutes the lost data belonged to.

Headers:
    reason            short machine-readable reason (printable ASCII, <= REASON_MAX chars)
    stage             transform | load
    exchange          the exchange whose data it was
    source_topic, source_partition, source_offset   where the bad record was read
    received_ns       when our extractor read the frame (when known)
    symbols           canonical symbols the lost data was about, comma-separated (when known)
    event_ms          the exchange time of the lost data (when known)
    untracked         "true": the record held only data of markets we do not track (no gap to repair)
    truncated, original_bytes, original_sha256      when the value was cut to DLQ_MAX_VALUE_BYTES

A dead letter must never be the next poison pill: its value is capped (a frame near Kafka's record
limit plus headers would be refused and stop the stage), every header is built from validated
or escaped parts.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from common.symbols import CANONICAL_RE

from .errors import BadRecord
from .headers import header_map, int_header, text_header
from .limits import EPOCH_CEILING_MS, EPOCH_CEILING_NS, EPOCH_FLOOR_MS, EPOCH_FLOOR_NS, INT64_MAX

DLQ_MAX_VALUE_BYTES = 256 * 1024
REASON_MAX = 200
MAX_SYMBOLS = 20                   # symbols named in one dead letter (more: the exchange-wide case)
STAGES = ("transform", "load")


def safe_reason(reason: object, limit: int = REASON_MAX) -> str:
    """A reason fit for a header or a log line: printable ASCII only, capped."""
    text = str(reason).encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(ch if 32 <= ord(ch) < 127 else f"\\x{ord(ch):02x}" for ch in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """What a dead letter says (read back from its headers)."""
    exchange: str
    stage: str
    reason: str
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    received_ns: int | None
    symbols: tuple[str, ...] | None
    event_ms: int | None
    untracked: bool = False


def dead_letter(value: bytes | None, *, reason: str, stage: str, exchange: str, source_topic: str,
                source_partition: int, source_offset: int, received_ns: int | None = None,
                symbols=None, event_ms: int | None = None,
                untracked: bool = False) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(value, headers) of the dead letter of one record."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r:.20}")
    headers = [("reason", safe_reason(reason).encode()), ("stage", stage.encode()),
               ("exchange", exchange.encode()), ("source_topic", safe_reason(source_topic, 250).encode()),
               ("source_partition", str(int(source_partition)).encode()),
               ("source_offset", str(int(source_offset)).encode())]
    if received_ns is not None and EPOCH_FLOOR_NS <= received_ns < EPOCH_CEILING_NS:
        headers.append(("received_ns", str(received_ns).encode()))
    named = sorted({s for s in symbols or () if isinstance(s, str) and CANONICAL_RE.fullmatch(s)})
    if named and len(named) <= MAX_SYMBOLS:
        headers.append(("symbols", ",".join(named).encode()))
    if event_ms is not None and EPOCH_FLOOR_MS <= event_ms < EPOCH_CEILING_MS:
        headers.append(("event_ms", str(event_ms).encode()))
    if untracked:
        headers.append(("untracked", b"true"))
    value = value or b""
    if len(value) > DLQ_MAX_VALUE_BYTES:
        # the whole record stays in its source topic (and, for raw frames, in the S3 archive)
        headers += [("truncated", b"true"), ("original_bytes", str(len(value)).encode()),
                    ("original_sha256", hashlib.sha256(value).hexdigest().encode())]
        value = value[:DLQ_MAX_VALUE_BYTES]
    return value, headers


def read_dead_letter(headers, exchange: str) -> DeadLetter:
    """The dead letter's headers, read leniently: a dead letter is never dead-lettered again, so
    whatever part is unreadable is left out (None) and the reason says so."""
    try:
        h = header_map(headers)
    except BadRecord as exc:
        return DeadLetter(exchange, "unknown", f"unreadable_dead_letter:{exc.reason}", None, None, None, None,
                          None, None)

    def opt(fn, *args):
        try:
            return fn(h, *args)
        except BadRecord:
            return None

    reason = opt(text_header, "reason") or "unreadable_dead_letter:reason"
    stage = opt(text_header, "stage")
    symbols = opt(text_header, "symbols", False)
    named = tuple(s for s in symbols.split(",") if CANONICAL_RE.fullmatch(s)) if symbols else None
    return DeadLetter(
        exchange=exchange, stage=stage if stage in STAGES else "unknown", reason=safe_reason(reason),
        source_topic=opt(text_header, "source_topic"),
        source_partition=opt(int_header, "source_partition", 0, 1 << 31),
        source_offset=opt(int_header, "source_offset", 0, INT64_MAX),
        received_ns=opt(int_header, "received_ns", EPOCH_FLOOR_NS, EPOCH_CEILING_NS),
        symbols=named or None,
        event_ms=opt(int_header, "event_ms", EPOCH_FLOOR_MS, EPOCH_CEILING_MS),
        untracked=h.get("untracked") == b"true")
