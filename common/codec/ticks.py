"""The transformed record (`<exchange>_transformed_data`): a batch of normalized ticks.

Format `ticks.v1` (headers `fmt: ticks.v1`, `count: N`): the value is N lines joined by "\\n",
one tick per line, its fields in COLUMNS order separated by tabs, `\\N` for an absent field -
PostgreSQL's COPY text format for the loader's staging table, so the loader checks each line
with one pattern and hands the batch to COPY as it is (no JSON, no Decimal in Python).

    binance<TAB>BTC-USDT<TAB>1764000000000<TAB>0<TAB>67220.01<TAB>\\N<TAB>...<TAB>1764000000005000000

- exchange: `binance` | `kucoin`, the record's topic's exchange;
- symbol: canonical `BASE-QUOTE` (upper-case letters and digits, 1-20 each side);
- event_time_ms: the exchange's time, epoch milliseconds, 2009-01-03 .. 2100-01-01;
- sequence: the exchange's sequence or trade id (0 when it gives none), a non-negative int64;
- price: a positive decimal in plain notation (no sign, no exponent, <= 40 digits each side);
- bid, bid_size, ask, ask_size, last_size, open_24h, high_24h, low_24h, volume_24h,
  quote_volume_24h: the same notation, non-negative, or `\\N`;
- received_ns: when our extractor read the frame, epoch nanoseconds.

Partitioning: every tick of a symbol goes to partition `partition_for(symbol, n)` (crc32 of
the symbol), in the order the transformer read them, so per-symbol order holds within a
partition. A record holds the ticks of one partition from one transformer batch; records carry
no key. Consumers must read the `fmt` header: a later format gets a new name.
"""
from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from decimal import Decimal

from common.models import Tick
from common.topics import EXCHANGES

from .errors import BadRecord
from .headers import header_map
from .limits import (EPOCH_CEILING_MS, EPOCH_CEILING_NS, EPOCH_FLOOR_MS, EPOCH_FLOOR_NS, INT64_MAX, PLAIN_DECIMAL,
                     POSITIVE_DECIMAL)

FORMAT = "ticks.v1"
COLUMNS = ("exchange", "symbol", "event_time_ms", "sequence", "price", "bid", "bid_size", "ask", "ask_size",
           "last_size", "open_24h", "high_24h", "low_24h", "volume_24h", "quote_volume_24h", "received_ns")
OPTIONAL = COLUMNS[5:15]
NULL = "\\N"
# a record stays well under Kafka's 1 MB default; a batch beyond this is cut into several records
MAX_RECORD_BYTES = 512 * 1024

_LINE = re.compile(
    rf"({'|'.join(EXCHANGES)})\t[A-Z0-9]{{1,20}}-[A-Z0-9]{{1,20}}\t([0-9]{{13}})\t([0-9]{{1,19}})\t"
    rf"{POSITIVE_DECIMAL}(?:\t(?:{PLAIN_DECIMAL}|\\N)){{{len(OPTIONAL)}}}\t([0-9]{{19}})")


def partition_for(symbol: str, partitions: int) -> int:
    """The partition of a symbol's ticks (stable across processes and restarts)."""
    return zlib.crc32(symbol.encode()) % partitions


def tick_line(tick: Tick) -> str:
    """One tick as one line of the format (the adapters validated every field)."""
    opt = [NULL if (v := getattr(tick, name)) is None else format(v, "f") for name in OPTIONAL]
    return "\t".join((tick.exchange, tick.symbol, str(tick.event_time_ms), str(tick.sequence), format(tick.price, "f"),
                      *opt, str(tick.received_ns)))


def encode_batches(lines: list[str]) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
    """[(value, headers)] of the records holding `lines` (one, or several under MAX_RECORD_BYTES)."""
    out, chunk, size = [], [], 0
    for line in lines:
        if chunk and size + len(line) + 1 > MAX_RECORD_BYTES:
            out.append(_record(chunk))
            chunk, size = [], 0
        chunk.append(line)
        size += len(line) + 1
    if chunk:
        out.append(_record(chunk))
    return out


def _record(lines: list[str]) -> tuple[bytes, list[tuple[str, bytes]]]:
    return "\n".join(lines).encode("ascii"), [("fmt", FORMAT.encode()), ("count", str(len(lines)).encode())]


def decode_lines(value: bytes | None, headers, exchange: str) -> list[str]:
    """The validated lines of one record (COPY text, in order); BadRecord when the format, the
    count or any line does not hold. A record is accepted or refused whole."""
    h = header_map(headers)
    if h.get("fmt") != FORMAT.encode():
        raise BadRecord("unknown_format")
    count = h.get("count", b"")
    if not count.isdigit() or len(count) > 7:
        raise BadRecord("bad_header:count")
    if not value:
        raise BadRecord("empty_record")
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise BadRecord("not_ascii") from None
    lines = text.split("\n")
    if len(lines) != int(count):
        raise BadRecord(f"count_mismatch:{len(lines)}!={int(count)}")
    match = _LINE.fullmatch
    for i, line in enumerate(lines):
        m = match(line)
        if m is None:
            raise BadRecord(f"bad_line:{i}:{_first_bad_field(line)}")
        ex, event_ms, seq, received_ns = m.group(1, 2, 3, 4)
        if ex != exchange:
            raise BadRecord(f"bad_line:{i}:exchange_{ex}_on_the_{exchange}_topic")
        if not EPOCH_FLOOR_MS <= int(event_ms) < EPOCH_CEILING_MS:
            raise BadRecord(f"bad_line:{i}:event_time_ms_out_of_range")
        if int(seq) > INT64_MAX:
            raise BadRecord(f"bad_line:{i}:sequence_out_of_range")
        if not EPOCH_FLOOR_NS <= int(received_ns) < EPOCH_CEILING_NS:
            raise BadRecord(f"bad_line:{i}:received_ns_out_of_range")
    return lines


def _first_bad_field(line: str) -> str:
    """Which field of a refused line fails (only on the error path)."""
    fields = line.split("\t")
    if len(fields) != len(COLUMNS):
        return f"{len(fields)}_fields"
    checks = [("exchange", r"|".join(EXCHANGES)), ("symbol", r"[A-Z0-9]{1,20}-[A-Z0-9]{1,20}"),
              ("event_time_ms", r"[0-9]{13}"), ("sequence", r"[0-9]{1,19}"), ("price", POSITIVE_DECIMAL),
              *((name, rf"{PLAIN_DECIMAL}|\\N") for name in OPTIONAL), ("received_ns", r"[0-9]{19}")]
    for value, (name, pattern) in zip(fields, checks):
        if not re.fullmatch(pattern, value):
            return name
    return "line"


def decode_ticks(value: bytes | None, headers, exchange: str) -> list[Tick]:
    """The record's ticks as `Tick`s (Decimal fields): for readers that want objects (the prices
    server, `cryptopipe peek`), not for the loader's hot path."""
    return [line_tick(line) for line in decode_lines(value, headers, exchange)]


def line_tick(line: str) -> Tick:
    f = line.split("\t")
    opt = {name: Decimal(v) for name, v in zip(OPTIONAL, f[5:15]) if v != NULL}
    return Tick(exchange=f[0], symbol=f[1], event_time_ms=int(f[2]), sequence=int(f[3]), price=Decimal(f[4]),
                received_ns=int(f[15]), **opt)


def event_ms_of(line: str) -> int:
    return int(line.split("\t", 3)[2])


def iter_symbols(lines: Iterable[str]) -> set[str]:
    return {line.split("\t", 2)[1] for line in lines}
