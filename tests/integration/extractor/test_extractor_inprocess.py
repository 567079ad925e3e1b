"""In-process extractor runs against the simulator with a collecting sink (no Kafka): sharding
over several connections, and the SUBSCRIBE path used when the stream list is too long for a URL."""
from __future__ import annotations

import asyncio
import json

import pytest

from common.codec.raw import frames_of, read_raw_meta

from common.exchanges import Binance, KuCoin
from streaming.extractor.events import Events
from streaming.extractor.metrics import Metrics
from streaming.extractor.runner import Extractor
from streaming.extractor.transport import Options

pytestmark = pytest.mark.integration


class CollectingSink:
    full = False

    def __init__(self):
        self.records = []

    def offer(self, record, event=False):
        self.records.append(record)
        return True

    async def put(self, record, stop=None):
        return self.offer(record)

    def poll(self):
        pass

    def safe_through_ns(self):
        return 2 ** 63 - 1          # collected in memory: nothing in flight


async def _run(exchange, shards, sim, seconds, scopes=None):
    sink = CollectingSink()
    metrics = Metrics(exchange)
    options = Options(stall_s=10, urls={"binance_ws_url": sim.url("BINANCE_WS_URL"),
                                        "kucoin_rest_url": sim.url("KUCOIN_REST_URL")})
    x = Extractor(exchange, shards, sink, Events(exchange, sink, metrics), metrics, options, heartbeat_s=1,
                  label="inproc", scopes=scopes)
    task = asyncio.create_task(x.run())
    await asyncio.sleep(seconds)
    x.stop.set()
    await asyncio.wait_for(task, 10)
    return sink.records


def _connected_scopes(records):
    """Each connection's `connected` event's symbols (what stream_sessions.symbols will hold)."""
    evs = [json.loads(r.value) for r in records if r.topic == "pipeline_events"]
    return sorted(sorted(e["detail"]["symbols"]) for e in evs if e["kind"] == "connected")


def _by_conn(records, topic):
    """{conn: [frame, ...]}: the frames of each connection's raw records (batches split)."""
    out = {}
    for r in records:
        if r.topic == topic:
            out.setdefault(r.key, []).extend(frames_of(r.value, read_raw_meta(r.headers)))
    return out


def test_binance_shards_and_subscribe_messages(sim_factory, monkeypatch):
    sim = sim_factory(symbols=12, rate=60)
    symbols = [s["symbol"] for s in sim.control.symbols("binance") if s["status"] == "TRADING"][:9]
    monkeypatch.setattr(Binance, "MAX_URL_CHARS", 10)      # force SUBSCRIBE instead of URL streams
    shards = Binance.plan_shards(symbols, [], 4)
    assert [len(s) for s in shards] == [4, 4, 1]
    records = asyncio.run(_run("binance", shards, sim, 5, Binance.shard_scopes(symbols, shards)))
    conns = _by_conn(records, "binance_raw_data")
    assert len(conns) == 3
    assert _connected_scopes(records) == sorted(sorted(symbols[i:i + 4]) for i in (0, 4, 8))
    subscribed = sorted(sorted(c["subscriptions"]) for c in sim.control.connections("binance"))
    assert subscribed == sorted(sorted(s) for s in shards)
    for frames in conns.values():
        assert json.loads(frames[0]) == {"result": None, "id": 1}   # the SUBSCRIBE reply comes first
        assert any(b"24hrMiniTicker" in f for f in frames[1:])
    kinds = [json.loads(r.value)["kind"] for r in records if r.topic == "pipeline_events"]
    assert kinds.count("connected") == 3 and kinds.count("subscribed") == 3 and kinds.count("disconnected") == 3


def test_kucoin_symbol_topics_chunked(sim_factory):
    sim = sim_factory(symbols=12, rate=60)
    symbols = [s["symbol"] for s in sim.control.symbols("kucoin") if s["status"] == "TRADING"][:6]
    shards = KuCoin.plan_shards(symbols, ["/market/match:" + symbols[0]], 4)
    records = asyncio.run(_run("kucoin", shards, sim, 4, KuCoin.shard_scopes(symbols, shards)))
    conns = _by_conn(records, "kucoin_raw_data")
    assert _connected_scopes(records) == sorted([sorted(symbols[:4]), sorted(symbols[4:])])
    assert [sum(len(t.split(":")[1].split(",")) for t in s) for s in shards] == [4, 3]
    assert len(conns) == len(shards)
    acks = sum(1 for frames in conns.values() for f in frames if b'"type":"ack"' in f)
    assert acks == sum(len(s) for s in shards)
    got = {json.loads(f)["topic"].split(":")[1] for frames in conns.values() for f in frames
           if b'"type":"message"' in f and b"/market/ticker:" in f}
    assert got <= set(symbols) and len(got) >= 3


def test_binance_server_pings_are_answered(sim_factory):
    sim = sim_factory(symbols=8, rate=40, binance_ping_interval=0.5, binance_pong_timeout=1.5)
    records = asyncio.run(_run("binance", Binance.plan_shards([], [], 1024), sim, 5))
    conns = sim.control.connections("binance")
    assert len(conns) == 1, conns                          # never closed for a missing pong
    assert conns[0]["close_reason"] in (None, "client_closed")
    assert len(_by_conn(records, "binance_raw_data")) == 1


def test_oversized_frame_ends_the_connection_on_record_and_streaming_resumes(sim_factory):
    sim = sim_factory(symbols=8, rate=40)

    async def go():
        sink = CollectingSink()
        metrics = Metrics("kucoin")
        options = Options(stall_s=10, urls={"kucoin_rest_url": sim.url("KUCOIN_REST_URL")})
        shards = KuCoin.plan_shards([], [], 300)
        x = Extractor("kucoin", shards, sink, Events("kucoin", sink, metrics), metrics, options,
                      heartbeat_s=1, label="big", backoff={"base_s": 0.1, "cap_s": 0.5})
        task = asyncio.create_task(x.run())
        await asyncio.sleep(2)
        await asyncio.to_thread(sim.control.oversized, 2 << 20, "kucoin")
        await asyncio.sleep(4)
        x.stop.set()
        await asyncio.wait_for(task, 10)
        return sink.records

    records = asyncio.run(go())
    events = [json.loads(r.value) for r in records if r.topic == "pipeline_events"]
    reasons = [e["reason"] for e in events if e["kind"] == "disconnected"]
    assert reasons[0] == "frame_too_big" and reasons[-1] == "shutdown", reasons
    conns = _by_conn(records, "kucoin_raw_data")
    assert len(conns) == 2 and all(any(b'"type":"message"' in f for f in fs) for fs in conns.values())
    assert max(len(r.value) for r in records) < 990_000
