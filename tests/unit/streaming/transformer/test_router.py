"""Transformer routing on recorded frames: ticks field by field, control frames, every bad-input
class to the DLQ with its reason, unknown Binance symbols refreshed once, then dead-lettered."""
import json
from decimal import Decimal

import pytest

from common.codec.ticks import decode_ticks, partition_for
from common.models import Tick
from common.exchanges import Binance
from streaming.consumer_loop import Metrics
from streaming.symbol_metadata import SymbolMetadata, symbol_map_from_file
from streaming.transformer import Router
from tests.conftest import SAMPLES
from tests.unit.streaming.kafka_fakes import FakeMessage, FakeProducer

RECEIVED_NS = 1_795_000_000_000_000_000
BINANCE_MAP = symbol_map_from_file(SAMPLES / "binance-rest-exchangeInfo-spot-trimmed-2021-10-12.json", "binance")


def msg(topic, value, offset=0, partition=0, received_ns=RECEIVED_NS):
    return FakeMessage(topic, partition, offset, value, b"conn-1",
                       [("received_ns", str(received_ns).encode()), ("conn_id", b"conn-1")], 0)


def make_router(symbols=None, loader=None):
    calls = []

    def load():
        calls.append(1)
        return loader() if loader else dict(BINANCE_MAP if symbols is None else symbols)

    meta = SymbolMetadata(load, min_interval_s=60, clock=lambda: 1000.0 + len(calls) * 100)
    meta.load()
    return Router(FakeProducer(), Metrics("transform"), meta, partitions=lambda topic: PARTITIONS), calls


PARTITIONS = 3


def ticks_of(router, topic):
    """(tick, partition, record headers) of every tick the router produced to `topic` (ticks.v1)."""
    router.flush()
    out = []
    for (t, v, _k, h), partition in zip(router.producer.records, router.producer.partitions):
        if t == topic:
            out += [(tick, partition, dict(h)) for tick in decode_ticks(v, h, topic.split("_")[0])]
    return out


def sample_lines(name):
    return [l.encode() for l in (SAMPLES / name).read_text().splitlines() if l.strip()]


def test_binance_mini_ticker_array_field_by_field():
    router, _ = make_router()
    frame = (SAMPLES / "binance-miniTicker-arr-2022-10-14.json").read_bytes().strip()
    router.route(msg("binance_raw_data", frame, offset=17, partition=2))
    out = ticks_of(router, "binance_transformed_data")
    by_symbol = {t.symbol: (t, k, h) for t, k, h in out}
    t, partition, headers = by_symbol["BTC-USDT"]
    assert partition == partition_for("BTC-USDT", PARTITIONS)          # every tick of a symbol: one partition
    assert (t.exchange, t.event_time_ms, t.price) == ("binance", 1665778598188, Decimal("19182.10000000"))
    assert (t.open_24h, t.high_24h, t.low_24h) == (Decimal("19478.02"), Decimal("19951.87"), Decimal("19100.01"))
    assert (t.volume_24h, t.quote_volume_24h) == (Decimal("363872.29609"), Decimal("7119945056.1549644"))
    assert t.received_ns == RECEIVED_NS and t.bid is None
    assert headers["fmt"] == b"ticks.v1" and int(headers["count"]) >= 1
    eth_btc = by_symbol["ETH-BTC"][0]
    assert (eth_btc.price, eth_btc.event_time_ms) == (Decimal("0.06778"), 1665778598150)
    # symbols the trimmed exchangeInfo does not list are dead-lettered in one record with the frame
    dlq = router.producer.by_topic("binance_dlq")
    n_elements = len(json.loads(frame))
    assert len(out) + (int(dict(dlq[0][3])["reason"].split(b" ")[0]) if dlq else 0) == n_elements


def test_binance_combined_trade_and_control_frames():
    router, _ = make_router()
    for i, frame in enumerate(sample_lines("binance-ws-unicorn-fy-2020.jsonl")[:3]):
        router.route(msg("binance_raw_data", frame, offset=i))
    out = [t for t, _, _ in ticks_of(router, "binance_transformed_data")]
    assert router.producer.by_topic("binance_dlq") == []      # the SUBSCRIBE reply is a control frame
    agg, trade = out
    assert (agg.symbol, agg.price, agg.sequence, agg.last_size, agg.event_time_ms) == \
        ("BTC-USDT", Decimal("9319.00000000"), 315753210, Decimal("0.01864900"), 1592584651517)
    assert (trade.price, trade.sequence, trade.last_size) == (Decimal("9302"), 343719861, Decimal("0.001019"))


def test_kucoin_ticker_all_and_symbol_topic_field_by_field():
    router, _ = make_router()
    frames = sample_lines("kucoin-ws-live-2026-10-03.jsonl")
    for i, frame in enumerate(frames[:2]):
        router.route(msg("kucoin_raw_data", frame, offset=i))
    by_symbol = {t.symbol: (t, p, h) for t, p, h in ticks_of(router, "kucoin_transformed_data")}
    (mog, k1, _), (eth, k2, _) = by_symbol["MOG-USDT"], by_symbol["ETH-USDT"]
    assert (k1, k2) == (partition_for("MOG-USDT", PARTITIONS), partition_for("ETH-USDT", PARTITIONS))
    assert (mog.exchange, mog.price, mog.event_time_ms, mog.sequence) == \
        ("kucoin", Decimal("0.0000001141"), 1790983975701, 1226485690)
    assert (mog.bid, mog.bid_size, mog.ask, mog.ask_size) == \
        (Decimal("0.000000114"), Decimal("110091671"), Decimal("0.0000001143"), Decimal("10171660581"))
    assert (eth.price, eth.last_size, eth.sequence) == (Decimal("2667.64"), Decimal("0.002"), 23242050174)
    # the exact price survives the wire form
    assert any(b"\t0.0000001141\t" in r[1] for r in router.producer.by_topic("kucoin_transformed_data"))


K_OK = {"topic": "/market/ticker:all", "type": "message", "subject": "BTC-USDT",
        "data": {"bestAsk": "2", "bestAskSize": "1", "bestBid": "1", "bestBidSize": "1", "price": "1.5",
                 "sequence": "5", "size": "1", "time": 1790983975701}}


def kucoin(**data):
    frame = json.loads(json.dumps(K_OK))
    for k, v in data.items():
        if v is None:
            frame["data"].pop(k)
        else:
            frame["data"][k] = v
    return json.dumps(frame).encode()


@pytest.mark.parametrize("frame, reason", [
    (b'{"topic": "/market/ticker:all", "data": {', b"malformed_json"),
    (b"\xff\xfe not utf8", b"malformed_json"),
    (kucoin(price=None), b"missing_field"),
    (kucoin(price=1.5), b"mistyped_field"),
    (kucoin(price="0"), b"non_positive_price"),
    (kucoin(price="-3"), b"non_positive_price"),
    (kucoin(price="NaN"), b"non_finite"),
    (kucoin(price="Infinity"), b"non_finite"),
    (kucoin(time=1), b"absurd_timestamp"),
    (kucoin(time=RECEIVED_NS // 1_000_000 + 10 * 86_400_000), b"absurd_timestamp"),
])
def test_every_bad_input_class_goes_to_the_dlq_with_reason_and_source(frame, reason):
    router, _ = make_router()
    router.route(msg("kucoin_raw_data", frame, offset=99, partition=1))
    router.route(msg("kucoin_raw_data", kucoin(), offset=100, partition=1))   # the stream keeps flowing
    (topic, value, key, headers), = router.producer.by_topic("kucoin_dlq")
    h = dict(headers)
    assert value == frame and key == b"conn-1"
    assert reason in h["reason"] and len(h["reason"]) <= 300
    assert (h["source_topic"], h["source_partition"], h["source_offset"], h["exchange"]) == \
        (b"kucoin_raw_data", b"1", b"99", b"kucoin")
    assert h["received_ns"] == str(RECEIVED_NS).encode()
    assert len(ticks_of(router, "kucoin_transformed_data")) == 1


def test_an_oversized_bad_frame_is_dead_lettered_truncated_with_its_size_and_digest():
    import hashlib

    from common.codec.dlq import DLQ_MAX_VALUE_BYTES

    frame = kucoin()[:-1] + b',"pad":"' + b"x" * (2 << 20) + b'"}'
    router, _ = make_router()
    router.route(msg("kucoin_raw_data", frame, offset=7))
    (topic, value, key, headers), = router.producer.by_topic("kucoin_dlq")
    h = dict(headers)
    assert len(value) == DLQ_MAX_VALUE_BYTES and frame.startswith(value)
    assert h["truncated"] == b"true" and h["original_bytes"] == str(len(frame)).encode()
    assert h["original_sha256"] == hashlib.sha256(frame).hexdigest().encode()
    assert b"oversized" in h["reason"]


def binance_mini(symbol, price="1.5"):
    return json.dumps({"stream": "!miniTicker@arr", "data": [
        {"e": "24hrMiniTicker", "E": 1665778598150, "s": symbol, "c": price, "o": "1", "h": "2", "l": "1",
         "v": "1", "q": "1"}]}).encode()


def test_unknown_symbol_triggers_one_refresh_then_parses():
    state = {"map": {"BTCUSDT": "BTC-USDT"}}
    router, calls = make_router(loader=lambda: dict(state["map"]))
    state["map"]["NEWUSDT"] = "NEW-USDT"                  # listed after our last load
    router.route(msg("binance_raw_data", binance_mini("NEWUSDT")))
    assert len(calls) == 2
    assert [t.symbol for t, _, _ in ticks_of(router, "binance_transformed_data")] == ["NEW-USDT"]


def test_symbol_still_unknown_after_refresh_is_dead_lettered_and_refresh_is_rate_limited():
    router, calls = make_router(symbols={"BTCUSDT": "BTC-USDT"})
    router.metadata.clock = lambda: 5000.0                 # long after the initial load
    router.route(msg("binance_raw_data", binance_mini("GHOSTUSDT"), offset=1))
    router.route(msg("binance_raw_data", binance_mini("GHOSTUSDT"), offset=2))
    assert len(calls) == 2                                  # one refresh for both frames
    dlq = router.producer.by_topic("binance_dlq")
    assert [dict(h)["source_offset"] for _, _, _, h in dlq] == [b"1", b"2"]
    assert all(b"unknown_symbol" in dict(h)["reason"] for _, _, _, h in dlq)


def test_partly_bad_array_keeps_good_ticks_and_dead_letters_the_frame_once():
    router, _ = make_router(symbols={"BTCUSDT": "BTC-USDT"})
    frame = json.dumps([
        {"e": "24hrMiniTicker", "E": 1665778598150, "s": "BTCUSDT", "c": "10", "o": "1", "h": "2", "l": "1", "v": "1", "q": "1"},
        {"e": "24hrMiniTicker", "E": 1665778598150, "s": "BTCUSDT", "c": "-1", "o": "1", "h": "2", "l": "1", "v": "1", "q": "1"},
    ]).encode()
    router.route(msg("binance_raw_data", frame))
    assert len(ticks_of(router, "binance_transformed_data")) == 1
    (_, value, _, headers), = router.producer.by_topic("binance_dlq")
    assert value == frame and dict(headers)["rejected_elements"] == b"1"
    assert b"non_positive_price" in dict(headers)["reason"]


def test_hostile_bytes_never_reach_a_header_unescaped():
    router, _ = make_router(symbols={})
    router.metadata.clock = lambda: 0.0
    router.metadata.attempted_at = 0.0                      # no refresh possible now
    router.route(msg("binance_raw_data", binance_mini("BAD\u202e\nSYM\x00")))
    (_, _, _, headers), = router.producer.by_topic("binance_dlq")
    reason = dict(headers)["reason"]
    assert all(32 <= b < 127 for b in reason)


def test_symbol_map_file_keeps_only_trading_symbols():
    assert BINANCE_MAP["BTCUSDT"] == "BTC-USDT"
    raw = json.loads((SAMPLES / "binance-rest-exchangeInfo-spot-trimmed-2021-10-12.json").read_text())["response"]
    breaking = [s["symbol"] for s in raw["symbols"] if s["status"] != "TRADING"]
    assert breaking and not set(breaking) & set(BINANCE_MAP)
    assert len(BINANCE_MAP) == len(Binance.symbol_map(Binance.markets_from_listing(raw)))


def test_scheduled_refresh_runs_in_the_background_and_the_router_picks_it_up():
    import threading
    from streaming.consumer_loop import StopFlag

    state = {"map": {"BTCUSDT": "BTC-USDT"}}
    loaded = threading.Event()

    def load():
        result = dict(state["map"])
        if "NEWUSDT" in result:
            loaded.set()
        return result

    meta = SymbolMetadata(load, refresh_s=0.05)
    meta.load()
    router = Router(FakeProducer(), Metrics("transform"), meta)
    router.adapter("binance")
    state["map"]["NEWUSDT"] = "NEW-USDT"
    stop = StopFlag()
    thread = meta.start_scheduled_refresh(stop)
    assert loaded.wait(30)
    stop.set()
    thread.join(30)
    meta.attempted_at = meta.clock()           # no on-demand refresh: the scheduled one must suffice
    router.route(msg("binance_raw_data", binance_mini("NEWUSDT")))
    assert [t.symbol for t, _, _ in ticks_of(router, "binance_transformed_data")] == ["NEW-USDT"]


# --- poison records: whatever a raw record's headers or key hold, it is dead-lettered, never a crash

POISON_HEADERS = [
    ([("received_ns", str(2 ** 63 + 5).encode())], "bad_header:received_ns:out_of_range"),
    ([("received_ns", b"99999999999999999999999999")], "bad_header:received_ns"),
    ([("received_ns", b"-5")], "bad_header:received_ns"),
    ([("received_ns", b"12ab")], "bad_header:received_ns"),
    ([("received_ns", b"\xff\xfe")], "bad_header:received_ns"),
    ([("received_ns", b"5")], "bad_header:received_ns:out_of_range"),          # 1970
    ([("received_ns", b"4102444800000000000")], "bad_header:received_ns:out_of_range"),   # 2100
    ([], "missing_header:received_ns"),
    ([("received_ns", str(RECEIVED_NS).encode())] * 2, "bad_header:repeated:received_ns"),
    ([("received_ns", str(RECEIVED_NS).encode()), ("conn_id", b"x" * 5000)], "bad_header:oversized:conn_id"),
    ([("received_ns", str(RECEIVED_NS).encode()), ("conn_id", "é".encode())], "bad_header:conn_id:not_ascii"),
]


@pytest.mark.parametrize("headers, reason", POISON_HEADERS)
def test_a_raw_record_with_poison_headers_is_dead_lettered(headers, reason):
    router, _ = make_router()
    poison = FakeMessage("kucoin_raw_data", 0, 9, kucoin(), b"\xff\x00not-utf8", headers)
    good = msg("kucoin_raw_data", kucoin(), offset=10)
    router.route(poison)
    router.route(good)
    (_topic, value, key, dlq_headers), = router.producer.by_topic("kucoin_dlq")
    h = dict(dlq_headers)
    assert h["reason"] == reason.encode() and h["stage"] == b"transform"
    assert (h["source_topic"], h["source_offset"], value, key) == (b"kucoin_raw_data", b"9", kucoin(), b"\xff\x00not-utf8")
    assert "received_ns" not in h                    # never copied from a header that failed
    assert len(ticks_of(router, "kucoin_transformed_data")) == 1     # the good record still flows


def test_a_bad_frame_names_the_symbol_it_held_so_its_minute_becomes_that_symbols_gap():
    router, _ = make_router()
    frame = kucoin(price="-5")
    router.route(msg("kucoin_raw_data", frame, offset=3))
    (_t, _v, _k, headers), = router.producer.by_topic("kucoin_dlq")
    h = dict(headers)
    assert h["symbols"] == json.loads(kucoin())["subject"].encode()
    assert h["received_ns"] == str(RECEIVED_NS).encode() and "untracked" not in h


def test_an_unknown_binance_symbol_is_dead_lettered_as_untracked():
    router, _ = make_router(symbols={"BTCUSDT": "BTC-USDT"})
    router.route(msg("binance_raw_data", binance_mini("NEWCOINUSDT")))
    (_t, _v, _k, headers), = router.producer.by_topic("binance_dlq")
    assert dict(headers)["untracked"] == b"true"


# --- KuCoin raw batches: frames byte for byte, one per line; a bad frame is dead-lettered alone

def test_a_raw_batch_splits_into_its_frames_and_a_bad_frame_is_dead_lettered_alone():
    from common.codec.raw import raw_batch

    router, _ = make_router()
    good = [kucoin(sequence=str(i), time=1790983975701 + i) for i in range(3)]
    bad = kucoin(price="NaN")
    value, headers = raw_batch([good[0], bad, good[1], good[2]], RECEIVED_NS, RECEIVED_NS + 9, "conn-1", "kucoin")
    router.route(FakeMessage("kucoin_raw_data", 0, 12, value, b"conn-1", headers))
    assert [t.sequence for t, _, _ in ticks_of(router, "kucoin_transformed_data")] == [0, 1, 2]
    (_t, dlq_value, _k, dlq_headers), = router.producer.by_topic("kucoin_dlq")
    h = dict(dlq_headers)
    assert dlq_value == bad and h["frame_index"] == b"1" and h["source_offset"] == b"12"
    assert h["received_ns"] == str(RECEIVED_NS).encode()


def test_a_raw_batch_whose_count_does_not_hold_is_dead_lettered_whole():
    from common.codec.raw import raw_batch

    router, _ = make_router()
    value, headers = raw_batch([kucoin(), kucoin()], RECEIVED_NS, RECEIVED_NS, "conn-1", "kucoin")
    headers = [(k, b"3" if k == "count" else v) for k, v in headers]
    router.route(FakeMessage("kucoin_raw_data", 0, 4, value, b"conn-1", headers))
    (_t, dlq_value, _k, dlq_headers), = router.producer.by_topic("kucoin_dlq")
    assert dlq_value == value and dict(dlq_headers)["reason"] == b"frame_count_mismatch:2!=3"
    assert ticks_of(router, "kucoin_transformed_data") == []
