"""Extractors against the simulator, on the real Kafka: completeness, order, events, faults."""
from __future__ import annotations

import socket
import time
import urllib.request

import pytest

from .harness import compare_with_truth, covered_spans, gaps, start_extractor, wait_for

pytestmark = pytest.mark.integration

SIM = {"symbols": 20, "rate": 60}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _kinds(events, conn=None):
    return [(e.kind, e.reason) for e in events if conn is None or e.conn_id == conn]


def _streams_again(run, sim, exchange, after_ms: int, timeout: float = 20.0):
    """Wait until the simulator has written ticks on a connection opened after `after_ms`."""
    def fresh():
        conns = [c for c in sim.control.connections(exchange) if c["opened_ms"] > after_ms and c["closed_ms"] is None]
        return conns and any(sim.control.truth(exchange, conn_id=c["conn_id"], limit=1) for c in conns)
    wait_for(fresh, timeout, f"{exchange} streaming again")
    time.sleep(1.5)


@pytest.mark.parametrize("exchange", ["binance", "kucoin"])
def test_normal_run_raw_topic_is_the_ground_truth(stack, sim_factory, tmp_path, exchange):
    sim = sim_factory(**SIM)
    port = _free_port()
    run = start_extractor(exchange, sim, tmp_path, "--metrics-port", str(port))
    wait_for(lambda: sim.control.truth(exchange, limit=1), 20, "first ticks")
    time.sleep(6)
    metrics = _metrics(port)
    assert metrics[f'cryptopipe_extractor_frames_total{{exchange="{exchange}"}}'] > 5
    assert metrics[f'cryptopipe_extractor_ticks_total{{exchange="{exchange}"}}'] >= 20
    assert metrics[f'cryptopipe_extractor_newest_frame_age_seconds{{exchange="{exchange}"}}'] < 5
    assert metrics[f'cryptopipe_extractor_connections{{exchange="{exchange}"}}'] == 1
    assert metrics[f'cryptopipe_extractor_spool_bytes{{exchange="{exchange}"}}'] == 0
    assert run.stop() == 0, run.log()
    assert run.stopped_s < 8, f"SIGTERM took {run.stopped_s:.1f}s"
    records = run.raw_records()
    check = compare_with_truth(exchange, sim, records)
    assert check.bad_frames == 0
    assert len(check.matched) == 1 and check.received_ticks >= 50
    # a clean stop loses at most what was in flight when our close began
    assert check.received_ticks >= check.expected_ticks - 200
    events = run.events()
    (conn,) = check.matched
    kinds = [k for k, _ in _kinds(events, conn)]
    assert kinds[0] == "connected" and kinds[1] == "subscribed" and kinds[-1] == "disconnected"
    assert kinds.count("heartbeat") >= 4
    assert events[-1].reason == "shutdown"
    if exchange == "kucoin":
        # control frames are raw frames too: welcome and ack are in the topic, byte for byte
        values = [r[3] for r in records]
        assert any(b'"type":"welcome"' in v for v in values) and any(b'"type":"ack"' in v for v in values)
        # one frame per tick: the Batcher gathers them, so there are far fewer records than frames
        counts = [int(r[4].get("count", b"1")) for r in records]
        assert sum(counts) > 2 * len(records), (sum(counts), len(records))


def test_binance_drop_outage_stall_malformed(stack, sim_factory, tmp_path):
    sim = sim_factory(**SIM)
    run = start_extractor("binance", sim, tmp_path, "--stall-seconds", "2")
    # each session lives a few seconds: longer than the coverage margin (push interval + latency
    # allowance, 2 s for Binance), so each one vouches for some time of its own
    wait_for(lambda: sim.control.truth("binance", limit=1), 20, "first ticks")
    time.sleep(5)
    t0 = int(time.time() * 1000)
    sim.control.drop("binance", mode="abort")
    _streams_again(run, sim, "binance", t0)
    time.sleep(4)
    t1 = int(time.time() * 1000)
    sim.control.outage(3, "binance")
    _streams_again(run, sim, "binance", t1 + 2500)
    time.sleep(4)
    t2 = int(time.time() * 1000)
    sim.control.stall(6, "binance")
    _streams_again(run, sim, "binance", t2 + 1500)
    sim.control.corrupt(count=2, kind="malformed", exchange="binance")
    time.sleep(3)
    assert run.stop() == 0, run.log()
    check = compare_with_truth("binance", sim, run.raw_records())
    assert check.bad_frames == 2                       # the corrupted frames are archived as received
    assert len(check.matched) >= 4
    events = run.events()
    reasons = [e.reason for e in events if e.kind == "disconnected"]
    assert "stall" in reasons and any(r.startswith(("connection_lost", "server_closed")) for r in reasons), reasons
    assert any(e.kind == "stalled" for e in events)
    spans = covered_spans(events)
    holes = gaps(spans)
    # the drop, the outage and the stall each lie in an uncovered span (a session between two of
    # them too short to vouch for anything past the coverage margin merges their spans)
    assert 2 <= len(holes) <= 4, (holes, spans)

    def uncovered(at_ms):
        return any(lo <= at_ms * 1_000_000 < hi for lo, hi in holes)
    assert uncovered(t0) and uncovered(t1 + 1500) and uncovered(t2 + 3000), (t0, t1, t2, holes)
    outage = [h for h in holes if h[1] - h[0] >= 2_000_000_000]
    assert outage, f"the 3 s outage left no uncovered span: {holes}"


def test_binance_rotation_and_server_shutdown_leave_no_uncovered_span(stack, sim_factory, tmp_path):
    sim = sim_factory(**SIM, max_lifetime=7)
    run = start_extractor("binance", sim, tmp_path, "--rotate-after", "4")
    wait_for(lambda: sim.control.truth("binance", limit=1), 20, "first ticks")
    time.sleep(9)                                      # two rotations by age
    sim.control.server_shutdown(grace_s=3.0)           # and one announced by the server
    time.sleep(5)
    assert run.stop() == 0, run.log()
    check = compare_with_truth("binance", sim, run.raw_records())
    assert len(check.matched) >= 4
    events = run.events()
    reasons = [e.reason for e in events if e.kind == "disconnected"]
    assert reasons.count("rotated") >= 3, reasons
    assert not any(r.startswith("server_closed") for r in reasons), reasons
    spans = covered_spans(events)
    assert gaps(spans) == [], spans


def test_kucoin_token_expiry_and_missing_pong(stack, sim_factory, tmp_path):
    sim = sim_factory(**SIM, kucoin_ping_interval=1, kucoin_ping_timeout=1)
    run = start_extractor("kucoin", sim, tmp_path, "--stall-seconds", "10")
    wait_for(lambda: sim.control.truth("kucoin", limit=1), 20, "first ticks")
    time.sleep(2)
    t0 = int(time.time() * 1000)
    sim.control.expire_tokens()
    _streams_again(run, sim, "kucoin", t0)
    t1 = int(time.time() * 1000)
    sim.control.stall(4, "kucoin")                     # no pongs (and no data): pong timeout first
    _streams_again(run, sim, "kucoin", t1 + 3000)
    assert run.stop() == 0, run.log()
    check = compare_with_truth("kucoin", sim, run.raw_records())
    assert len(check.matched) >= 3
    events = run.events()
    reasons = [e.reason for e in events if e.kind == "disconnected"]
    assert "token_expired" in reasons and "pong_timeout" in reasons, reasons
    assert len(gaps(covered_spans(events))) >= 2
