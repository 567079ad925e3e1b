"""Strict readers of Kafka record headers (a header is attacker-controlled bytes: anyone who can
write a topic chooses them)."""
from __future__ import annotations

from .errors import BadRecord
from .limits import MAX_DIGITS, MAX_HEADER_VALUE_BYTES


def header_map(headers) -> dict[str, bytes]:
    """Kafka headers -> {name: value}; a repeated name is ambiguous, so it is refused."""
    out: dict[str, bytes] = {}
    for item in headers or ():
        try:
            name, value = item
        except (TypeError, ValueError):
            raise BadRecord("bad_header:shape") from None
        if not isinstance(name, str):
            raise BadRecord("bad_header:name")
        if name in out:
            raise BadRecord(f"bad_header:repeated:{_name(name)}")
        if value is not None and len(value) > MAX_HEADER_VALUE_BYTES:
            raise BadRecord(f"bad_header:oversized:{_name(name)}")
        out[name] = b"" if value is None else bytes(value)
    return out


def int_header(headers: dict[str, bytes], name: str, lo: int, hi: int) -> int:
    """A required decimal integer header within [lo, hi)."""
    raw = headers.get(name)
    if raw is None:
        raise BadRecord(f"missing_header:{name}")
    if not raw or len(raw) > MAX_DIGITS or not raw.isdigit():
        raise BadRecord(f"bad_header:{name}")
    value = int(raw)
    if not lo <= value < hi:
        raise BadRecord(f"bad_header:{name}:out_of_range")
    return value


def text_header(headers: dict[str, bytes], name: str, required: bool = True) -> str | None:
    """An ASCII printable header (ids, names)."""
    raw = headers.get(name)
    if raw is None:
        if required:
            raise BadRecord(f"missing_header:{name}")
        return None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise BadRecord(f"bad_header:{name}:not_ascii") from None
    if not text.isprintable():
        raise BadRecord(f"bad_header:{name}:not_printable")
    return text


def _name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-" else "?" for ch in name[:40])
