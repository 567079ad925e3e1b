"""WS /v1/stream on the real Kafka: ticks produced to (this module's) transformed topics reach the
subscribed clients in order, exactly, once; conflation bounds updates per symbol; a client that
does not read is conflated and then disconnected while the others keep getting everything;
subscriptions and connections are limited and bad ones refused with a message."""
import json
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from common.models import Tick

pytestmark = pytest.mark.integration
UTC = timezone.utc


@pytest.fixture
def produce(api_server, stack, clean_db):
    """send(ticks): produce ticks to the server's topics, keyed by symbol like the transformer.
    clean_db: the symbols the tests subscribe to are known (latest_prices) and nothing else."""
    from common.codec.ticks import encode_batches, partition_for, tick_line
    from common.kafka import make_producer
    from common.topics import transformed_topic

    with clean_db.cursor() as cur:
        cur.executemany("INSERT INTO latest_prices (exchange, symbol, price, event_time) VALUES (%s,%s,1,now())",
                        [(ex, s) for ex in ("binance", "kucoin") for s in ("BTC-USDT", "ETH-USDT", "SOL-USDT")])
    producer = make_producer()

    def send(ticks):
        # as the transformer writes them: ticks.v1 batches, a symbol's ticks on its own partition
        batches: dict[tuple[str, int], list[str]] = {}
        for t in ticks:
            batches.setdefault((t.exchange, partition_for(t.symbol, 3)), []).append(tick_line(t))
        for (exchange, partition), lines in batches.items():
            for value, headers in encode_batches(lines):
                producer.produce(transformed_topic(exchange) + api_server.suffix, value, partition=partition,
                                 headers=headers)
        producer.flush(30)
    return send


def ticks(exchange: str, symbol: str, n: int, start_ms: int, price0: str = "100.00000000") -> list[Tick]:
    base = Decimal(price0)
    return [Tick(exchange, symbol, start_ms + i, base + Decimal(i) / 1000, time.time_ns(), sequence=i)
            for i in range(n)]


def wire(t: Tick) -> dict:
    return {"exchange": t.exchange, "symbol": t.symbol, "price": format(t.price, "f"),
            "event_time": datetime.fromtimestamp(t.event_time_ms / 1000, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z")}


class Collector:
    """A websocket client reading in a thread until stopped; frames may be objects or arrays."""

    def __init__(self, url: str):
        self.ws = connect(url, open_timeout=10, max_size=2**24)
        self.got: list[dict] = []
        self.closed_with = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            for frame in self.ws:
                data = json.loads(frame)
                self.got += data if isinstance(data, list) else [data]
        except ConnectionClosed as e:
            self.closed_with = e

    def wait(self, predicate, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.05)
        raise AssertionError(f"timed out; got {len(self.got)} ticks ({self.got[:3]}), closed: {self.closed_with}")

    def close(self):
        self.ws.close()
        self._thread.join(5)


def wait_tailing(api_server):
    deadline = time.monotonic() + 60
    while not api_server.get("/v1/health")[1]["stream"]["kafka_assigned"]:
        assert time.monotonic() < deadline, "the server never got its partitions"
        time.sleep(0.3)
    time.sleep(1.0)      # the assignment's start offsets are resolved right after


def test_subscribers_get_their_ticks_exactly_in_order(api_server, produce):
    wait_tailing(api_server)
    everything = Collector(f"{api_server.ws_url}/v1/stream")
    btc_kucoin = Collector(f"{api_server.ws_url}/v1/stream?exchanges=kucoin&symbols=btc-usdt")
    time.sleep(0.5)
    t0 = int(time.time() * 1000)
    sent = ticks("binance", "BTC-USDT", 300, t0) + ticks("kucoin", "BTC-USDT", 300, t0, "0.0000001141") \
        + ticks("kucoin", "ETH-USDT", 200, t0, "3000.5")
    produce(sent)
    everything.wait(lambda c: len(c.got) >= len(sent))
    btc_kucoin.wait(lambda c: len(c.got) >= 300)
    time.sleep(0.5)
    for c in (everything, btc_kucoin):
        c.close()
    for key in (("binance", "BTC-USDT"), ("kucoin", "BTC-USDT"), ("kucoin", "ETH-USDT")):
        mine = [wire(t) for t in sent if (t.exchange, t.symbol) == key]
        assert [g for g in everything.got if (g["exchange"], g["symbol"]) == key] == mine
    assert len(everything.got) == len(sent)
    assert btc_kucoin.got == [wire(t) for t in sent if (t.exchange, t.symbol) == ("kucoin", "BTC-USDT")]


def test_conflation_sends_at_most_one_update_per_symbol_per_interval(api_server, produce):
    wait_tailing(api_server)
    c = Collector(f"{api_server.ws_url}/v1/stream?symbols=SOL-USDT&conflate_ms=1000")
    time.sleep(0.5)
    t0 = int(time.time() * 1000)
    started = time.monotonic()
    sent = []
    for burst in range(3):             # three bursts of 200 ticks, about 0.5 s apart
        batch = ticks("binance", "SOL-USDT", 200, t0 + burst * 1000, str(150 + burst))
        sent += batch
        produce(batch)
        time.sleep(0.5)
    last = wire(sent[-1])
    c.wait(lambda c: c.got and c.got[-1] == last)
    elapsed = time.monotonic() - started
    c.close()
    # one update per second at most: however the bursts fell, far fewer than 600
    assert 1 <= len(c.got) <= int(elapsed) + 2, (len(c.got), elapsed)
    times = [g["event_time"] for g in c.got]
    assert times == sorted(times) and len(set(times)) == len(times)       # only newer, never repeated
    assert all(g in [wire(t) for t in sent] for g in c.got)


def test_a_client_that_does_not_read_is_conflated_then_disconnected(api_server, produce):
    wait_tailing(api_server)
    slow_before = api_server.metric("cryptopipe_api_ws_disconnects_total", reason="slow")
    conflated_before = api_server.metric("cryptopipe_api_ws_ticks_conflated_total")
    fast = Collector(f"{api_server.ws_url}/v1/stream?symbols=ETH-USDT")
    # a client that never reads: small receive buffer, so the server meets backpressure early
    import socket

    sock = socket.create_connection(("127.0.0.1", api_server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"GET /v1/stream?symbols=ETH-USDT HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    time.sleep(1.0)
    t0 = int(time.time() * 1000)
    sent = []
    deadline = time.monotonic() + 90
    # keep ticks coming (bigger frames than the socket takes) until the server gives up on it
    while api_server.metric("cryptopipe_api_ws_disconnects_total", reason="slow") == slow_before:
        assert time.monotonic() < deadline, "the slow client was never disconnected"
        batch = ticks("kucoin", "ETH-USDT", 500, t0 + len(sent), "3000." + "1" * 40)
        sent += batch
        produce(batch)
        time.sleep(0.2)
    assert api_server.metric("cryptopipe_api_ws_ticks_conflated_total") > conflated_before
    fast.wait(lambda c: len(c.got) >= len(sent), timeout=60)
    fast.close()
    sock.close()
    assert fast.got == [wire(t) for t in sent]          # the reading client missed nothing meanwhile


def test_subscriptions_and_connections_are_limited(api_server, produce):
    def refused(path):
        with pytest.raises(InvalidStatus) as e:
            connect(api_server.ws_url + path, open_timeout=10)
        return e.value.response.status_code, json.loads(e.value.response.body)["detail"]

    status, detail = refused("/v1/stream?symbols=" + ",".join(f"S{i}-USDT" for i in range(11)))
    assert status == 400 and "too many symbols" in detail
    status, detail = refused("/v1/stream?symbols=NOPE-USDT")
    assert status == 404 and "unknown symbol" in detail
    status, detail = refused("/v1/stream?exchanges=bitmex")
    assert status == 400 and "unknown exchange" in detail
    status, detail = refused("/v1/stream?symbols=BTC-USDT%27%3B%20DROP%20TABLE%20ticks")
    assert status == 400 and "not a symbol" in detail
    status, detail = refused("/v1/stream?conflate_ms=-5")
    assert status == 400 and "conflate_ms" in detail
    status, detail = refused("/v1/stream?conflate_ms=999999")
    assert status == 400
    status, detail = refused("/v1/stream?sym=BTC-USDT")
    assert status == 400 and "unknown parameter" in detail

    open_ = [connect(f"{api_server.ws_url}/v1/stream?symbols=BTC-USDT", open_timeout=10) for _ in range(6)]
    try:
        status, detail = refused("/v1/stream")
        assert status == 503 and "too many connections" in detail
    finally:
        for ws in open_:
            ws.close()
    deadline = time.monotonic() + 10
    while api_server.metric("cryptopipe_api_ws_clients") > 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    connect(f"{api_server.ws_url}/v1/stream", open_timeout=10).close()       # room again
