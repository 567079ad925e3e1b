"""A bounded on-disk FIFO of Kafka records, used while the broker is unreachable.

Layout: `<dir>/<number>.seg` segment files of length-prefixed, CRC-checked records, read lowest
number first; `<dir>/cursor` holds "<segment number> <byte offset>" of the first record not yet
delivered. Appends are single `os.write` calls (in the page cache at once, so a killed process
loses nothing it appended); the cursor only moves after the records before it were delivered.
A torn record at a segment's tail (power loss mid-write) fails its CRC and ends that segment.

`prepend()` writes a segment numbered below every other one: at shutdown the records still in
the producer's memory are older than everything spooled, and must be replayed first.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from common.settings import stack_home

_HEAD = struct.Struct(">III")          # meta length, value length, crc32(meta + value)
SEGMENT_BYTES = 16 << 20
FIRST_SEGMENT = 1_000_000_000          # room below for prepended segments


@dataclass(slots=True)
class Record:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    # when the frame was read (0: not a frame, e.g. an event); kept in memory only, to know up to
    # when everything read is safe (see KafkaSink.safe_through_ns)
    received_ns: int = 0

    def size(self) -> int:
        return len(self.value) + (len(self.key) if self.key else 0) + 64


def encode(record: Record) -> bytes:
    meta = json.dumps({"t": record.topic,
                       "k": None if record.key is None else record.key.decode("latin-1"),
                       "h": [[k, v.decode("latin-1")] for k, v in record.headers]},
                      separators=(",", ":")).encode()
    crc = zlib.crc32(record.value, zlib.crc32(meta))
    return _HEAD.pack(len(meta), len(record.value), crc) + meta + record.value


def _decode_at(buf: bytes, pos: int) -> tuple[Record, int] | None:
    if pos + _HEAD.size > len(buf):
        return None
    meta_len, value_len, crc = _HEAD.unpack_from(buf, pos)
    start = pos + _HEAD.size
    end = start + meta_len + value_len
    if end > len(buf):
        return None
    meta_b, value = buf[start:start + meta_len], buf[start + meta_len:end]
    if zlib.crc32(value, zlib.crc32(meta_b)) != crc:
        return None
    meta = json.loads(meta_b)
    key = None if meta["k"] is None else meta["k"].encode("latin-1")
    return Record(meta["t"], key, bytes(value), [(k, v.encode("latin-1")) for k, v in meta["h"]]), end


def default_dir(exchange: str) -> Path:
    """Where `exchange`'s extractor spools unless told otherwise (`--spool-dir`)."""
    return stack_home() / "spool" / exchange


class Spool:
    def __init__(self, directory: str | Path, max_bytes: int = 1 << 30, reserve_bytes: int = 1 << 20):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self.reserve_bytes = int(reserve_bytes)     # headroom kept for lifecycle events
        self._cursor_path = self.dir / "cursor"
        self._fd: int | None = None
        self._write_seg: int | None = None
        self._bytes = 0
        for seg in self._segments():
            self._bytes += seg.stat().st_size
        cur_seg, cur_off = self._read_cursor()
        segs = self._segment_numbers()
        if segs and cur_seg == segs[0]:
            self._bytes -= min(cur_off, (self.dir / f"{cur_seg}.seg").stat().st_size)

    # ------------------------------------------------------------------ state

    def _segments(self) -> list[Path]:
        return sorted(self.dir.glob("*.seg"), key=lambda p: int(p.stem))

    def _segment_numbers(self) -> list[int]:
        return [int(p.stem) for p in self._segments()]

    def _read_cursor(self) -> tuple[int, int]:
        try:
            seg, off = self._cursor_path.read_text().split()
            return int(seg), int(off)
        except (OSError, ValueError):
            return -1, 0

    def _write_cursor(self, seg: int, off: int) -> None:
        tmp = self._cursor_path.with_suffix(".tmp")
        tmp.write_text(f"{seg} {off}\n")
        os.replace(tmp, self._cursor_path)

    @property
    def depth_bytes(self) -> int:
        return max(0, self._bytes)

    def empty(self) -> bool:
        return self._bytes <= 0

    def has_room(self, nbytes: int = 0, *, reserve: bool = False) -> bool:
        limit = self.max_bytes + (self.reserve_bytes if reserve else 0)
        return self._bytes + nbytes <= limit

    # ------------------------------------------------------------------ writing

    def append(self, record: Record, *, reserve: bool = False) -> bool:
        """Append at the tail; False (nothing written) when the spool is full."""
        data = encode(record)
        if not self.has_room(len(data), reserve=reserve):
            return False
        if self._fd is None or self._write_seg is None or os.fstat(self._fd).st_size >= SEGMENT_BYTES:
            self._open_tail()
        os.write(self._fd, data)
        self._bytes += len(data)
        return True

    def prepend(self, records: list[Record]) -> None:
        """Write `records` (in order) ahead of everything already spooled (ignores the size bound:
        these were received and must not be lost)."""
        if not records:
            return
        segs = self._segment_numbers()
        cur_seg, cur_off = self._read_cursor()
        number = (segs[0] if segs else FIRST_SEGMENT) - 1
        data = b"".join(encode(r) for r in records)
        path = self.dir / f"{number}.seg"
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        self._bytes += len(data)
        if segs and cur_seg == segs[0] and cur_off:
            # materialize the cursor of the old head: drop its delivered prefix
            self._compact_head(segs[0], cur_off)
        self._write_cursor(number, 0)

    def _compact_head(self, seg: int, off: int) -> None:
        path = self.dir / f"{seg}.seg"
        if self._write_seg == seg:
            self._close_tail()
        rest = path.read_bytes()[off:]
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(rest)
        os.replace(tmp, path)

    def _open_tail(self) -> None:
        self._close_tail()
        segs = self._segment_numbers()
        # always a fresh segment: never append behind a torn tail another process left
        number = (segs[-1] + 1) if segs else FIRST_SEGMENT
        self._fd = os.open(self.dir / f"{number}.seg", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._write_seg = number

    def _close_tail(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._write_seg = None

    # ------------------------------------------------------------------ reading

    def peek(self, max_records: int = 1000, max_bytes: int = 8 << 20) -> tuple[list[Record], tuple[int, int]]:
        """The oldest records (not removed) and the position just after them, for `commit`."""
        segs = self._segment_numbers()
        cur_seg, cur_off = self._read_cursor()
        out: list[Record] = []
        self.last_positions: list[tuple[int, int]] = []    # position after each returned record
        size = 0
        for seg in segs:
            off = cur_off if seg == cur_seg else 0
            buf = (self.dir / f"{seg}.seg").read_bytes()
            pos = off
            while len(out) < max_records and size < max_bytes:
                item = _decode_at(buf, pos)
                if item is None:
                    break
                rec, pos = item
                out.append(rec)
                self.last_positions.append((seg, pos))
                size += len(rec.value)
            if len(out) >= max_records or size >= max_bytes:
                return out, (seg, pos)
            if pos < len(buf) and self._write_seg != seg:
                pos = len(buf)                    # torn tail of a closed segment: skip it
            if pos < len(buf) or self._write_seg == seg:
                return out, (seg, pos)
            cur_seg = -1
        return out, (segs[-1], (self.dir / f"{segs[-1]}.seg").stat().st_size) if segs else (-1, 0)

    def commit(self, position: tuple[int, int]) -> None:
        """Forget every record before `position` (they were delivered)."""
        seg, off = position
        if seg < 0:
            return
        cur_seg, cur_off = self._read_cursor()
        for number in self._segment_numbers():
            path = self.dir / f"{number}.seg"
            if number < seg:
                self._bytes -= path.stat().st_size - (cur_off if cur_seg == number else 0)
                if self._write_seg == number:
                    self._close_tail()
                path.unlink()
        path = self.dir / f"{seg}.seg"
        prev_seg, prev_off = self._read_cursor()
        prev = prev_off if prev_seg == seg else 0
        self._bytes -= off - prev
        if path.exists() and off >= path.stat().st_size and self._write_seg != seg:
            path.unlink()
            self._write_cursor(-1, 0)
        else:
            self._write_cursor(seg, off)
        if not self._segment_numbers():
            self._bytes = 0

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
        self._close_tail()
