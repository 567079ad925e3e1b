"""Helpers for the transformer/loader/archiver integration tests on the real stack.

Every test works on its own topics (`<canonical name>_t<random>`, passed to the daemons with
`--topic-suffix`) and its own consumer groups, so parallel runs and a running stack never steal
each other's partitions or records. The daemons run as their own Kafka identities (their ACLs
cover the suffixed topics and groups named after their default group, e.g. `loader-test-...`);
the helpers here read and write as admin.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, TopicPartition

from common import kafka
from common.codec.raw import raw_headers  # noqa: F401 - the extractor's headers, for tests
from common.kafka import make_consumer, make_producer
from common.topics import DLQ_TOPICS, PIPELINE_EVENTS, RAW_TOPICS, TRANSFORMED_TOPICS

ROOT = Path(__file__).resolve().parents[2]


def new_suffix() -> str:
    return "_t" + uuid.uuid4().hex[:10]


def create_topics(suffix: str, partitions: int = 3) -> list[str]:
    """The pipeline's topics with `suffix`; returns their names."""
    names = {t + suffix: partitions for t in RAW_TOPICS + TRANSFORMED_TOPICS}
    names.update({t + suffix: 1 for t in DLQ_TOPICS + (PIPELINE_EVENTS,)})
    kafka.create_topics(names)
    return list(names)


def delete_topics(names: list[str]) -> None:
    kafka.delete_topics(names)


def produce(topic: str, records: list[tuple], partition: int | None = None) -> None:
    """records: (key, value, headers)."""
    p = make_producer()
    for key, value, headers in records:
        kwargs = {"partition": partition} if partition is not None else {}
        p.produce(topic, value=value, key=key, headers=headers, **kwargs)
    assert p.flush(60) == 0


def ticks_records(ticks, partitions: int = 3, per_record: int = 100) -> list[tuple[int, bytes, list]]:
    """[(partition, value, headers)]: ticks.v1 records as the transformer writes them (every tick
    of a symbol in its partition, in order; at most `per_record` ticks a record)."""
    from common.codec.ticks import encode_batches, partition_for, tick_line

    by_partition: dict[int, list[str]] = {}
    for t in ticks:
        by_partition.setdefault(partition_for(t.symbol, partitions), []).append(tick_line(t))
    out = []
    for partition, lines in sorted(by_partition.items()):
        for i in range(0, len(lines), per_record):
            out += [(partition, v, h) for v, h in encode_batches(lines[i:i + per_record])]
    return out


def produce_ticks(topic: str, ticks, partitions: int = 3, per_record: int = 100) -> None:
    p = make_producer()
    for partition, value, headers in ticks_records(ticks, partitions, per_record):
        p.produce(topic, value=value, headers=headers, partition=partition)
    assert p.flush(60) == 0


def read_topic(topic: str, timeout: float = 60.0) -> list:
    """Every committed record of `topic` (read_committed, up to the end at call time)."""
    c = make_consumer("reader-" + uuid.uuid4().hex)
    try:
        md = c.list_topics(topic, timeout=30).topics[topic]
        parts = [TopicPartition(topic, p, 0) for p in md.partitions]
        ends = {}
        for tp in parts:
            _lo, hi = c.get_watermark_offsets(tp, timeout=30)
            ends[tp.partition] = hi
        c.assign(parts)
        out, done = [], {p for p, hi in ends.items() if hi == 0}
        deadline = time.monotonic() + timeout
        while len(done) < len(ends) and time.monotonic() < deadline:
            for m in c.consume(10000, timeout=0.5):
                if m.error():
                    continue
                out.append(m)
            for tp in c.position([TopicPartition(topic, p) for p in ends]):
                if tp.offset >= ends[tp.partition]:
                    done.add(tp.partition)
        return out
    finally:
        c.close()


def committed(group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets; a partition with no commit counts as 0 (matches an empty one)."""
    c = make_consumer(group)
    try:
        for attempt in range(30):       # another test may be restarting the broker: wait it out
            try:
                return {tp.partition: max(tp.offset, 0) for tp in
                        c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)}
            except KafkaException:
                if attempt == 29:
                    raise
                time.sleep(1)
    finally:
        c.close()


def end_offsets(topic: str, partitions: int) -> dict[int, int]:
    c = make_consumer("w-" + uuid.uuid4().hex)
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(partitions)}
    finally:
        c.close()


def daemon_identity(argv: list[str]) -> dict[str, str]:
    """The Kafka identity `cryptopipe <argv>` runs as under supervisord (KAFKA_SASL_* settings)."""
    from cryptopipe.stack.kafka_auth import client_env, identity_of_command

    identity = identity_of_command(argv)
    assert identity, f"no Kafka identity for `cryptopipe {' '.join(argv[:2])}`"
    return client_env(identity)


_RUNNING: list["Daemon"] = []


@pytest.fixture
def topics(stack):
    """Import into a test module: a private set of the pipeline's topics (their suffix), deleted after."""
    suffix = new_suffix()
    names = create_topics(suffix)
    yield suffix
    delete_topics(names)


@pytest.fixture(autouse=True)
def stop_leftover_daemons():
    """Import into a test module: whatever a failed test left running is killed at teardown."""
    yield
    while _RUNNING:
        _RUNNING.pop().kill9()


class Daemon:
    """`python -m cryptopipe <command> ...` as a subprocess, its output in a log file."""

    def __init__(self, args: list[str], log_dir: Path, name: str):
        self.args = args
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Daemon":
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **daemon_identity(self.args))
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "cryptopipe", *self.args], cwd=ROOT, env=env,
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _RUNNING.append(self)
        return self

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def term(self, timeout: float = 60) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_until(predicate, timeout: float, what: str, daemons: list[Daemon] = ()) -> None:
    """Poll `predicate` until true; on timeout fail with the daemons' logs (a deadline, not an assertion on time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for d in daemons:
            if d.proc is not None and d.proc.poll() is not None and d.proc.returncode not in (0, -9):
                raise AssertionError(f"{d.args} exited {d.proc.returncode}:\n{d.log()[-4000:]}")
        time.sleep(0.3)
    logs = "\n".join(f"--- {d.args}\n{d.log()[-3000:]}" for d in daemons)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def data_ends(records: list, partitions: int) -> dict[int, int]:
    """Per partition, the offset after the last data record (transaction markers excluded)."""
    ends = {p: 0 for p in range(partitions)}
    for m in records:
        ends[m.partition()] = max(ends[m.partition()], m.offset() + 1)
    return ends


def caught_up(group: str, topic: str, ends: dict[int, int]) -> bool:
    got = committed(group, topic, len(ends))
    return all(got[p] >= ends[p] for p in ends)
