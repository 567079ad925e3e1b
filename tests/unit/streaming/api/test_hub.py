"""The fan-out hub and its per-client bounds, without sockets."""
import json
from decimal import Decimal

import pytest

from common.models import Tick
from streaming.api.hub import Client, Hub, SlowClient, batch_text
from streaming.api.records import tick_wire, ticks_of_record


def tick(ex, sym, ms, price="1.5"):
    return Tick(ex, sym, ms, Decimal(price), 0)


def client(symbols=None, exchanges=("binance", "kucoin"), **kw):
    return Client(frozenset(exchanges), frozenset(symbols) if symbols is not None else None, **kw)


def sent(c, n=10_000):
    return [json.loads(p) for p in c.take(n)]


def test_wire_form_is_exact_and_utc():
    from common.codec.ticks import encode_batches, tick_line

    t = Tick("kucoin", "SHIB-USDT", 1764057600123, Decimal("0.0000001141"), 1764057600200000000, sequence=7)
    assert tick_wire(t) == {"exchange": "kucoin", "symbol": "SHIB-USDT", "price": "0.0000001141",
                            "event_time": "2025-11-25T08:00:00.123Z"}
    [(value, headers)] = encode_batches([tick_line(t), tick_line(t)])
    assert ticks_of_record(value, headers, "kucoin_transformed_data") == [t, t]
    assert ticks_of_record(value, headers, "kucoin_transformed_data_bench1") == [t, t]
    with pytest.raises(ValueError):         # a JSON record of the old format is refused, not misread
        ticks_of_record(b'{"exchange": "kucoin", "symbol": "X-Y", "event_time_ms": 1, "received_ns": 1, '
                        b'"price": "1.5"}', [], "kucoin_transformed_data")
    with pytest.raises(ValueError):         # a binance tick on the kucoin topic
        ticks_of_record(value, headers, "binance_transformed_data")


def test_subscriptions_route_ticks_to_their_clients_only():
    hub = Hub()
    everything, kucoin_only, btc = client(), client(exchanges=("kucoin",)), client(symbols={"BTC-USDT"})
    for c in (everything, kucoin_only, btc):
        hub.add(c)
    hub.publish([tick("binance", "BTC-USDT", 1), tick("kucoin", "ETH-USDT", 2), tick("kucoin", "BTC-USDT", 3)])
    assert [(t["exchange"], t["symbol"]) for t in sent(everything)] == [
        ("binance", "BTC-USDT"), ("kucoin", "ETH-USDT"), ("kucoin", "BTC-USDT")]
    assert [(t["exchange"], t["symbol"]) for t in sent(kucoin_only)] == [("kucoin", "ETH-USDT"), ("kucoin", "BTC-USDT")]
    assert [(t["exchange"], t["symbol"]) for t in sent(btc)] == [("binance", "BTC-USDT"), ("kucoin", "BTC-USDT")]
    hub.remove(btc)
    assert hub.by_key == {} and len(hub) == 2
    hub.publish([tick("binance", "BTC-USDT", 4)])
    assert btc.pending() == 0


def test_an_overflowing_queue_is_conflated_to_the_newest_tick_per_symbol():
    c = client(max_queue=10)
    c.offer([(("binance", f"S{i % 3}-USDT"), json.dumps({"i": i}).encode()) for i in range(25)])
    assert c.conflating and c.pending() == 3                  # bounded by the symbols, not by the ticks
    assert c.conflated_count == 22
    assert sorted(t["i"] for t in sent(c)) == [22, 23, 24]     # the newest of each symbol


def test_a_slow_client_recovers_when_its_socket_takes_frames_at_once_and_is_dropped_otherwise():
    c = client(max_queue=2, slow_s=5)
    c.offer([(("binance", "A-B"), b"1"), (("binance", "A-B"), b"2"), (("binance", "A-B"), b"3")])
    assert c.slow_since is not None
    c.take(10)
    c.check_caught_up(c.slow_since + 1, send_s=0.001)          # the frame went out at once: back to full stream
    assert not c.conflating
    c.offer([(("binance", "A-B"), b"4"), (("binance", "A-B"), b"5"), (("binance", "A-B"), b"6")])
    started = c.slow_since
    c.check_caught_up(started + 1, send_s=3.0)                # blocked sends: still slow, not yet too long
    with pytest.raises(SlowClient):
        c.check_caught_up(started + 6, send_s=3.0)


def test_requested_conflation_keeps_one_entry_per_symbol_and_order_per_symbol():
    c = client(conflate_ms=250)
    c.offer([(("kucoin", "A-B"), b'{"n":1}'), (("kucoin", "C-D"), b'{"n":2}'), (("kucoin", "A-B"), b'{"n":3}')])
    assert [t["n"] for t in sent(c)] == [3, 2]
    assert c.pending() == 0


def test_batches_are_json_arrays_and_single_ticks_objects():
    assert json.loads(batch_text([b'{"a":1}'])) == {"a": 1}
    assert json.loads(batch_text([b'{"a":1}', b'{"a":2}'])) == [{"a": 1}, {"a": 2}]
