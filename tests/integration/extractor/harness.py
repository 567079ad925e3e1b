"""Run a real extractor process against a private simulator and the shared Kafka, then compare what
reached the raw topic with the simulator's ground truth.

Shared broker: every run tags its connection ids with a unique label, records the topics' end
offsets before starting and reads only after them, filtered by that label.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from confluent_kafka import TopicPartition

from common.kafka import make_consumer
from common.codec.events import decode_event
from common.codec.raw import frames_of, read_raw_meta
from common.models import PipelineEvent
from common.topics import PIPELINE_EVENTS, raw_topic
from common.exchanges import BadFrame, get_adapter

ROOT = Path(__file__).resolve().parents[3]


def end_offsets(topic: str) -> dict[int, int]:
    consumer = make_consumer(f"extractor-test-offsets-{uuid.uuid4().hex[:8]}")
    try:
        meta = consumer.list_topics(topic, timeout=10)
        out = {}
        for p in meta.topics[topic].partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            out[p] = high
        return out
    finally:
        consumer.close()


def read_since(topic: str, start: dict[int, int], key_prefix: bytes, timeout: float = 30.0) -> list:
    """Records of `topic` after `start` up to the current end, whose key starts with `key_prefix`
    (or whose conn_id header does, for pipeline_events): [(partition, offset, key, value, headers)]."""
    stop = end_offsets(topic)
    consumer = make_consumer(f"extractor-test-{uuid.uuid4().hex[:8]}", {"enable.partition.eof": True})
    out = []
    try:
        parts = [TopicPartition(topic, p, start.get(p, 0)) for p in stop if stop[p] > start.get(p, 0)]
        if not parts:
            return out
        consumer.assign(parts)
        remaining = {tp.partition for tp in parts}
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                continue
            p = msg.partition()
            if msg.offset() >= stop[p]:
                remaining.discard(p)
                continue
            headers = {k: v for k, v in (msg.headers() or [])}
            conn = headers.get("conn_id", b"")
            if (msg.key() or b"").startswith(key_prefix) or conn.startswith(key_prefix):
                out.append((p, msg.offset(), msg.key(), msg.value(), headers))
            if msg.offset() + 1 >= stop[p]:
                remaining.discard(p)
        assert not remaining, f"could not read {topic} up to {stop} (left: {remaining})"
    finally:
        consumer.close()
    return out


@dataclass
class Run:
    exchange: str
    label: str
    proc: subprocess.Popen
    raw_start: dict
    events_start: dict
    spool_dir: Path
    started_ms: int
    log_path: Path
    stopped_s: float | None = None
    rc: int | None = None

    @property
    def prefix(self) -> bytes:
        return f"{self.exchange[:2]}-{self.label}-".encode()

    def stop(self, timeout: float = 15.0) -> int:
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.rc = self.proc.wait(5)
        self.stopped_s = time.monotonic() - began
        return self.rc

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def raw_records(self) -> list:
        return read_since(raw_topic(self.exchange), self.raw_start, self.prefix)

    def events(self) -> list[PipelineEvent]:
        recs = read_since(PIPELINE_EVENTS, self.events_start, self.prefix)
        now_ns = time.time_ns()
        out = [decode_event(r[3], now_ns) for r in recs]
        return [e for e in out if e.exchange == self.exchange]


def start_extractor(exchange: str, sim, tmp_path: Path, *args: str, label: str | None = None) -> Run:
    label = label or f"t{uuid.uuid4().hex[:8]}"
    spool_dir = tmp_path / f"spool-{label}"
    raw_start = end_offsets(raw_topic(exchange))
    events_start = end_offsets(PIPELINE_EVENTS)
    env = dict(os.environ, BINANCE_WS_URL=sim.url("BINANCE_WS_URL"), KUCOIN_REST_URL=sim.url("KUCOIN_REST_URL"),
               PYTHONUNBUFFERED="1")
    log_path = tmp_path / f"extract-{label}.log"
    proc = subprocess.Popen([sys.executable, "-m", "cryptopipe", "extract", exchange, "--label", label,
                             "--metrics-port", "0", "--spool-dir", str(spool_dir), "--heartbeat-seconds", "1",
                             "--backoff-base", "0.2", "--backoff-cap", "2", *args],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"))
    return Run(exchange, label, proc, raw_start, events_start, spool_dir, int(time.time() * 1000), log_path)


# --------------------------------------------------------------------------- completeness

@dataclass
class Check:
    matched: dict = field(default_factory=dict)        # our conn id -> sim conn id
    received_ticks: int = 0
    expected_ticks: int = 0
    bad_frames: int = 0
    lost_tail: dict = field(default_factory=dict)     # sim conn -> ticks sent but not received at its end


def tick_key(symbol: str, event_ms: int, price, sequence) -> tuple:
    return (symbol, int(event_ms), Decimal(str(price)), int(sequence) if sequence else 0)


def compare_with_truth(exchange: str, sim, records: list, tail_ms: int | None = 1500) -> Check:
    """Every tick the simulator wrote on a connection must be in the raw topic, in the order written,
    on one of our connections; only a tail written within `tail_ms` before that connection closed
    (in flight when it was cut) may be missing. Nothing may be in the raw topic that was not sent."""
    symbols = {s["exchange_symbol"]: s["symbol"] for s in sim.control.symbols(exchange)}
    adapter = get_adapter(exchange, symbols)
    ours: dict[bytes, list[tuple]] = defaultdict(list)
    last_frame: dict[bytes, int] = {}
    check = Check()
    for _, _, key, record_value, headers in sorted(records, key=lambda r: (r[2], r[0], r[1])):
        assert headers["exchange"] == exchange.encode() and headers["conn_id"] == key
        assert int(headers["received_ns"]) > 1_600_000_000 * 10 ** 9
        meta = read_raw_meta(list(headers.items()))
        for value in frames_of(record_value, meta):          # a KuCoin record holds a batch of frames
            rejects: list = []
            try:
                ticks = adapter.parse_ticks(value, meta.received_ns, rejects)
            except BadFrame:
                check.bad_frames += 1
                continue
            assert not rejects, rejects[:3]
            if ticks:
                last_frame[key] = len(ticks)
            if exchange == "kucoin":
                ours[key] += [tick_key(t.symbol, t.event_time_ms, t.price, t.sequence) for t in ticks]
            else:
                ours[key] += [tick_key(t.symbol, t.event_time_ms, t.price, 0) for t in ticks]
    truth: dict[str, list[tuple]] = defaultdict(list)
    sent_at: dict[str, list[int]] = defaultdict(list)
    for row in sim.control.truth(exchange, by="sent"):
        if row["flag"] in ("malformed", "truncated"):
            continue
        seq = row["sequence"] if exchange == "kucoin" else 0
        truth[row["conn_id"]].append(tick_key(row["symbol"], row["event_ms"], row["price"], seq))
        sent_at[row["conn_id"]].append(row["sent_ms"])
    closed = {c["conn_id"]: c["closed_ms"] for c in sim.control.connections(exchange)}
    unmatched_sim = {cid for cid, ticks in truth.items() if ticks}
    for key, ticks in ours.items():
        if not ticks:
            continue
        def fits(cid, ticks=ticks, key=key):
            if truth[cid][:len(ticks)] == ticks:
                return True
            # the simulator records a frame after writing it: a frame written just as the socket
            # closed can reach us without reaching its ground truth (only ever the last one)
            extra = len(ticks) - len(truth[cid])
            return 0 < extra <= last_frame[key] and ticks[:len(truth[cid])] == truth[cid]

        match = next((cid for cid in sorted(unmatched_sim) if fits(cid)), None)
        assert match is not None, f"{key!r}: {len(ticks)} ticks match no simulator connection's prefix"
        unmatched_sim.discard(match)
        check.matched[key.decode()] = match
        check.received_ticks += len(ticks)
        missing = len(truth[match]) - len(ticks)
        if missing > 0:
            first_missing_sent = sent_at[match][len(ticks)]
            end = closed.get(match)
            assert tail_ms is None or (end is not None and first_missing_sent >= end - tail_ms), \
                f"{match}: {missing} ticks from {first_missing_sent} never arrived (closed {end})"
            check.lost_tail[match] = missing
    assert not unmatched_sim, f"simulator connections whose ticks reached no record: {sorted(unmatched_sim)}"
    check.expected_ticks = sum(len(v) for v in truth.values())
    return check


def covered_spans(events: list[PipelineEvent]) -> list[tuple[int, int, str]]:
    """[start_ns, end_ns, conn] per connection, as gap detection reads them: from `subscribed` to
    `disconnected` (or the last heartbeat), but never past the newest `covered_until_ns` an event
    of the connection reported (what its extractor read and made safe)."""
    by_conn: dict[str, dict] = defaultdict(dict)
    for e in events:
        d = by_conn[e.conn_id]
        if e.kind == "subscribed":
            d.setdefault("start", e.at_ns)
        elif e.kind == "disconnected":
            d["end"] = e.at_ns
        elif e.kind == "heartbeat":
            d["beat"] = max(d.get("beat", 0), e.at_ns)
        covered = e.detail.get("covered_until_ns")
        if covered is not None:
            d["covered"] = max(d.get("covered", 0), covered)
    spans = []
    for conn, d in by_conn.items():
        if "start" in d:
            end = d.get("end", d.get("beat", d["start"]))
            spans.append((d["start"], min(end, d.get("covered", end)), conn))
    return sorted(spans)


def gaps(spans: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
    out = []
    spans = [s for s in spans if s[1] > s[0]]     # a connection that vouched for nothing covers nothing
    if not spans:
        return out
    reach = spans[0][1]
    for start, end, _ in spans[1:]:
        if start > reach:
            out.append((reach, start))
        reach = max(reach, end)
    return out


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
