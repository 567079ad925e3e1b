"""ticks.v1, the transformed topics' format: round trip, exact decimals, per-symbol partitions, and
every hostile line refused with the field it fails (COPY must never see a tab, newline or backslash
that is not the format's own)."""
from decimal import Decimal

import pytest

from common.codec import BadRecord
from common.codec.ticks import (COLUMNS, MAX_RECORD_BYTES, decode_lines, decode_ticks, encode_batches,
                                partition_for, tick_line)
from common.models import Tick

NS = 1_764_000_000_000_000_000
MS = NS // 1_000_000


def tick(**kw):
    """A Binance BTC-USDT tick with a 10-digit bid and a 24 h volume (fields overridable)."""
    base = dict(exchange="binance", symbol="BTC-USDT", event_time_ms=MS, price=Decimal("67220.01"),
                received_ns=NS + 5, sequence=7, bid=Decimal("0.0000001141"), volume_24h=Decimal("12.5"))
    base.update(kw)
    return Tick(**base)


def record(lines: list[str], **headers):
    (value, hdrs), = encode_batches(lines)
    hdrs = dict(hdrs, **{k: v for k, v in headers.items()})
    return value, list(hdrs.items())


def test_round_trip_keeps_exact_decimals_and_nulls():
    t = tick(bid=Decimal("1E-7"), ask=Decimal("0.00000010"))
    value, headers = record([tick_line(t)])
    assert dict(headers) == {"fmt": b"ticks.v1", "count": b"1"}
    fields = value.decode().split("\t")
    assert len(fields) == len(COLUMNS) and fields[:5] == ["binance", "BTC-USDT", str(MS), "7", "67220.01"]
    assert fields[5] == "0.0000001" and fields[6] == "\\N"            # plain notation, never 1E-7
    (back,) = decode_ticks(value, headers, "binance")
    assert back == t


def test_a_symbol_always_lands_in_the_same_partition_and_batches_split_under_the_limit():
    assert {partition_for("BTC-USDT", 3) for _ in range(5)} == {partition_for("BTC-USDT", 3)}
    assert len({partition_for(f"S{i}-USDT", 3) for i in range(50)}) == 3
    lines = [tick_line(tick(sequence=i)) for i in range(8000)]
    records = encode_batches(lines)
    assert len(records) > 1 and all(len(v) <= MAX_RECORD_BYTES for v, _ in records)
    decoded = [line for v, h in records for line in decode_lines(v, h, "binance")]
    assert decoded == lines                                            # every tick, in order


GOOD = tick_line(tick())


def with_field(name: str, value: str) -> str:
    fields = GOOD.split("\t")
    fields[COLUMNS.index(name)] = value
    return "\t".join(fields)


@pytest.mark.parametrize("line, reason", [
    (with_field("exchange", "ftx"), "exchange"),
    (with_field("symbol", "BTC/USDT"), "symbol"),
    (with_field("symbol", "btc-usdt"), "symbol"),
    (with_field("symbol", "BTC-USDT;DROP TABLE ticks"), "symbol"),
    (with_field("event_time_ms", "99"), "event_time_ms"),
    (with_field("event_time_ms", "4102444800000"), "event_time_ms_out_of_range"),      # 2100
    (with_field("sequence", "-1"), "sequence"),
    (with_field("sequence", "9999999999999999999"), "sequence_out_of_range"),          # > int64
    (with_field("price", "0"), "price"),
    (with_field("price", "-1"), "price"),
    (with_field("price", "1e5"), "price"),
    (with_field("price", "NaN"), "price"),
    (with_field("price", "1" * 41), "price"),
    (with_field("bid", "1e-3"), "bid"),
    (with_field("bid", ""), "bid"),
    (with_field("ask", "\\\\N"), "ask"),
    (with_field("received_ns", "1"), "received_ns"),
    (with_field("received_ns", str(2 ** 64)), "received_ns"),
    (GOOD + "\tEXTRA", "17_fields"),
    (with_field("price", "1\r"), "price"),
])
def test_hostile_lines_are_refused_naming_the_field(line, reason):
    value = line.encode()
    with pytest.raises(BadRecord, match=reason):
        decode_lines(value, [("fmt", b"ticks.v1"), ("count", b"1")], "binance")


@pytest.mark.parametrize("value, headers, reason", [
    (GOOD.encode(), [("count", b"1")], "unknown_format"),
    (GOOD.encode(), [("fmt", b"ticks.v0"), ("count", b"1")], "unknown_format"),
    (GOOD.encode(), [("fmt", b"ticks.v1")], "bad_header:count"),
    (GOOD.encode(), [("fmt", b"ticks.v1"), ("count", b"2")], "count_mismatch"),
    ((GOOD + "\n" + GOOD).encode(), [("fmt", b"ticks.v1"), ("count", b"1")], "count_mismatch"),
    (b"", [("fmt", b"ticks.v1"), ("count", b"0")], "empty_record"),
    ("binance\tБТЦ-USDT".encode(), [("fmt", b"ticks.v1"), ("count", b"1")], "not_ascii"),
    (b'{"exchange":"binance","symbol":"BTC-USDT"}', [("fmt", b"ticks.v1"), ("count", b"1")], "bad_line:0"),
    (GOOD.encode(), [("fmt", b"ticks.v1"), ("fmt", b"ticks.v1"), ("count", b"1")], "repeated"),
])
def test_hostile_records_are_refused_whole(value, headers, reason):
    with pytest.raises(BadRecord, match=reason):
        decode_lines(value, headers, "binance")


def test_a_kucoin_line_on_the_binance_topic_is_refused():
    with pytest.raises(BadRecord, match="exchange_kucoin_on_the_binance_topic"):
        decode_lines(tick_line(tick(exchange="kucoin")).encode(), [("fmt", b"ticks.v1"), ("count", b"1")], "binance")
