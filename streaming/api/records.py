"""The one place a record of a transformed topic (`<exchange>_transformed_data`) becomes ticks,
and a tick becomes the wire form every client relies on.

Today a record is one tick (`common.models.Tick.to_json`); when the topics carry batches of ticks
in a versioned format, only `ticks_of_record` changes.
"""
from __future__ import annotations

import orjson

from common.models import Tick, decimal_text, iso_utc


def ticks_of_record(value: bytes) -> list[Tick]:
    """The ticks one Kafka record carries; raises ValueError/KeyError/TypeError on a bad record."""
    return [Tick.from_json(value)]


def tick_wire(tick: Tick) -> dict:
    """`{"exchange", "symbol", "price", "event_time"}`: price a decimal string, time ISO-8601 UTC."""
    return {"exchange": tick.exchange, "symbol": tick.symbol, "price": decimal_text(tick.price),
            "event_time": iso_utc(tick.event_time)}


def tick_wire_bytes(tick: Tick) -> bytes:
    return orjson.dumps(tick_wire(tick))
