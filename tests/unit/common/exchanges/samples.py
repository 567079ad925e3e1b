"""Recorded frames from tests/fixtures/exchange-samples/, as bytes exactly as sent."""
from __future__ import annotations

import json
import re

from tests.conftest import SAMPLES

# a receive time after every recorded frame (2026-11-25), so no sample is "in the future"
RECEIVED_NS = 1_795_000_000_000_000_000


def jsonl_frames(name: str) -> list[bytes]:
    return [line.encode() for line in (SAMPLES / name).read_text().splitlines() if line.strip()]


def json_file(name: str):
    return json.loads((SAMPLES / name).read_text())


def capture_frames(name: str) -> list[bytes]:
    """Received websocket frames of a cryptofeed capture file (`TIME: FRAME` lines)."""
    out = []
    for line in (SAMPLES / name).read_text().splitlines():
        m = re.match(r"^(\d+\.\d+): (.*)$", line)
        if m:
            out.append(m.group(2).encode())
    return out


def binance_exchange_info() -> dict:
    first = (SAMPLES / "cryptofeed-BINANCE.0.txt").read_text().split("\n", 1)[0]
    return json.loads(first.split(": ", 1)[1])


def compact(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
