"""The one place a record of a transformed topic (`<exchange>_transformed_data`) becomes ticks,
and a tick becomes the wire form every client relies on.

A record is a batch of ticks in the codec's versioned format (`common.codec.ticks`, `ticks.v1`
today, named in its `fmt` header); a later format changes `ticks_of_record` only.
"""
from __future__ import annotations

import orjson

from common.codec.ticks import decode_ticks
from common.models import Tick, decimal_text, iso_utc
from common.topics import exchange_of_topic


def ticks_of_record(value: bytes | None, headers, topic: str) -> list[Tick]:
    """The ticks one Kafka record carries, in order; raises `common.codec.BadRecord` (a
    ValueError) when the record does not hold."""
    return decode_ticks(value, headers, exchange_of_topic(topic))


def tick_wire(tick: Tick) -> dict:
    """`{"exchange", "symbol", "price", "event_time"}`: price a decimal string, time ISO-8601 UTC."""
    return {"exchange": tick.exchange, "symbol": tick.symbol, "price": decimal_text(tick.price),
            "event_time": iso_utc(tick.event_time)}


def tick_wire_bytes(tick: Tick) -> bytes:
    return orjson.dumps(tick_wire(tick))
