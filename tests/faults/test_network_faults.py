"""Network faults between the consumers and Kafka / Postgres / S3, made with Toxiproxy.

An isolated chain runs beside whatever else uses the stack: a private simulator (its own seed,
its own synthetic symbols), both extractors (`--label netfault-<id>`, writing to private topics
`*<suffix>`), and a transformer, loader and archiver on those topics with their own consumer
groups, whose Kafka, Postgres and S3 connections all go through toxiproxy
(tests/plugins/toxiproxy.py). The extractors talk to Kafka directly: the faults sit between the
consumers and the services.

Scenarios: latency (300 ms ± 100 ms on Kafka and Postgres), connection resets (reset_peer on
Postgres and S3) and a partition (Kafka's proxy disabled). After each one the chain settles
(the groups' committed offsets reach the topics' end offsets) and the invariants of
tests/plugins/pipeline.py are checked on this chain's data only: every tick the simulator sent
while an extractor session of this chain was up is in `ticks` exactly once with its price; every
raw record of the window is in S3 exactly once; every process is still alive. Each scenario
prints a `FIGURES <scenario>: ...` line.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from common.topics import EXCHANGES, PIPELINE_EVENTS, RAW_TOPICS, TRANSFORMED_TOPICS
from tests.integration.sinks_util import create_topics, daemon_identity, delete_topics
from tests.plugins.pipeline import Figures, PipelineHandle, now_ms, wait_for
from tests.plugins.sim import SimProcess

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
SIM_SEED = 4711                 # no other test uses it
SIM_SYMBOLS = 70                # real names first, then synthetic ones unique to the seed
SIM_RATE = 1400                 # trades/s over all symbols: ~20/s per symbol
OUR_SYMBOLS = 8
BUSY_SEEDS = range(1, 21)       # seeds other tests, the bench and `make up` use
SETTLE_TIMEOUT_S = 180
PARTITION_S = 20


def private_symbols() -> list[str]:
    """Synthetic, liquid symbols of our seed that no commonly used seed also lists: `ticks` rows
    are keyed by (exchange, symbol, event_time, sequence), so sharing a symbol with another
    simulator feeding the same database could make two different ticks collide."""
    from sim.market import _REAL_BASES, build_universe

    real = {b for b, _ in _REAL_BASES}
    busy = {s.canonical for seed in BUSY_SEEDS for s in build_universe(seed, 1000)}
    ours = [s.canonical for s in build_universe(SIM_SEED, SIM_SYMBOLS)
            if s.base not in real and not s.illiquid and not s.break_on_binance and s.canonical not in busy]
    assert len(ours) >= OUR_SYMBOLS, ours
    return ours[:OUR_SYMBOLS]


class Proc:
    """A subprocess of the chain, its output in a log file, restarted when it exits as
    supervisord's autorestart does for the real daemons (a watchdog exit is a restart request)."""

    def __init__(self, name: str, argv: list[str], env: dict, log_dir: Path):
        self.name = name
        self.argv, self.env = argv, env
        self.log_path = log_dir / f"{name}.log"
        self.restarts = 0
        self._stopping = threading.Event()
        self._spawn()
        self._monitor = threading.Thread(target=self._supervise, name=f"supervise-{name}", daemon=True)
        self._monitor.start()

    def _spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            if self.proc.poll() is not None and not self._stopping.is_set():
                self.restarts += 1
                time.sleep(1.0)
                if not self._stopping.is_set():
                    self._spawn()
            time.sleep(0.2)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        """The end of the log without librdkafka's reconnect attempts (hundreds during a partition)."""
        if not self.log_path.exists():
            return ""
        lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if "failed: Connection refused" not in ln]
        return "\n".join(lines)[-n:]

    def stop(self) -> None:
        self._stopping.set()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class NetChain(PipelineHandle):
    """PipelineHandle's invariants, narrowed to this chain's topics, groups and sessions."""

    def __init__(self, sim: SimProcess, suffix: str, label: str, groups: dict, procs: dict, toxi):
        super().__init__(None, sim.control)
        self.sim_process = sim
        self.suffix = suffix
        self.label = label
        self.groups = groups
        self.procs = procs
        self.toxi = toxi
        self.raw_topics = tuple(t + suffix for t in RAW_TOPICS)
        self.transformed_topics = tuple(t + suffix for t in TRANSFORMED_TOPICS)
        self.events_topic = PIPELINE_EVENTS + suffix
        self.only_symbols = private_symbols()        # the shared `ticks` table holds others' rows too

    def coverage(self, pg, exchange: str) -> list[tuple[int, int]]:
        with pg.cursor() as cur:
            cur.execute("""SELECT (extract(epoch FROM coalesce(subscribed_at, connected_at)) * 1000)::bigint,
                                  (extract(epoch FROM coalesce(disconnected_at, last_seen_at)) * 1000)::bigint
                             FROM stream_sessions WHERE exchange = %s AND conn_id LIKE %s""",
                        (exchange, f"{exchange[:2]}-{self.label}-%"))
            return [(a, b) for a, b in cur.fetchall()]

    def settle(self, timeout: float = SETTLE_TIMEOUT_S, archive: bool = True) -> None:
        time.sleep(1.0)
        raw = self.end_offsets(self.raw_topics)
        self.wait_consumed(self.groups["transform"], raw, timeout)
        self.wait_consumed(self.groups["load"], self.end_offsets(self.transformed_topics + (self.events_topic,)),
                           timeout)
        if archive:
            self.wait_consumed(self.groups["archive"], raw, timeout)

    def dead(self) -> dict:
        out = {name: p.proc.returncode for name, p in self.procs.items() if not p.alive()}
        if self.sim_process.proc.poll() is not None:
            out["sim"] = self.sim_process.proc.returncode
        if not self.toxi.alive():
            out["toxiproxy"] = self.toxi.proc.returncode
        return out

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{p.log_tail()}" for name, p in self.procs.items())

    def committed_sum(self, group: str, topics) -> int:
        """The group's committed offsets over `topics`, summed (no commit counts 0)."""
        keys = list(self.end_offsets(topics))
        got = self.committed(group, keys)
        assert got, f"could not read {group}'s committed offsets"
        return sum(max(v, 0) for v in got.values())


@pytest.fixture(scope="module")
def net_chain(stack, toxi_proxies, toxiproxy, tmp_path_factory):
    from common.db import connect

    log_dir = tmp_path_factory.mktemp("netfaults")
    run = uuid.uuid4().hex[:8]
    suffix, label = f"_nf{run}", f"netfault-{run}"
    # named after the daemons' default groups: their Kafka identities may use only those
    groups = {"transform": f"transformer-nf-{run}", "load": f"loader-nf-{run}", "archive": f"archiver-nf-{run}"}
    topics = create_topics(suffix, stack.topic_partitions)
    sim = SimProcess(["--port", "0", "--symbols", str(SIM_SYMBOLS), "--rate", str(SIM_RATE), "--seed",
                      str(SIM_SEED), "--truth-max", "2000000"])
    procs: dict[str, Proc] = {}
    chain = None
    try:
        base = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **{
            k: sim.env[k] for k in ("BINANCE_WS_URL", "BINANCE_REST_URL", "KUCOIN_REST_URL")})
        base.pop("SYMBOLS", None)
        proxied = dict(base, **toxi_proxies.env)
        py = [sys.executable, "-m", "cryptopipe"]
        symbols = ",".join(private_symbols())

        def start(name: str, args: list[str], env: dict) -> None:
            # each daemon as its own Kafka identity (SCRAM, also through the proxy's TOXI listener)
            procs[name] = Proc(name, py + args, dict(env, **daemon_identity(args)), log_dir)

        for ex in EXCHANGES:
            start(f"extract-{ex}", ["extract", ex, "--symbols", symbols, "--topic-suffix", suffix, "--label", label,
                                    "--metrics-port", "0", "--spool-dir", str(log_dir / f"spool-{ex}"),
                                    "--heartbeat-seconds", "2"], base)
        common_args = ["--topic-suffix", suffix, "--metrics-port", "0"]
        start("transform", ["transform", "--group", groups["transform"], *common_args], proxied)
        start("load", ["load", "--group", groups["load"], "--retention-days", "0", *common_args], proxied)
        start("archive", ["archive", "--group", groups["archive"], "--max-age", "5", *common_args], proxied)
        chain = NetChain(sim, suffix, label, groups, procs, toxiproxy)
        pg = connect()
        pg.autocommit = True
        try:
            # warm: both exchanges' sessions recorded and ticks flowing through the proxies
            wait_for(lambda: chain.dead() or all(chain.coverage(pg, ex) for ex in EXCHANGES) or None, 90,
                     "both extractors' sessions in stream_sessions")
            assert not chain.dead(), f"dead at start: {chain.dead()}\n{chain.logs()}"
            chain.settle()
        finally:
            pg.close()
        yield chain
    finally:
        if chain is not None and chain.dead():
            print(f"\nnet_chain: processes dead at teardown: {chain.dead()}\n{chain.logs()}")
        for p in procs.values():
            p.stop()
        sim.stop()
        delete_topics(topics)


@contextmanager
def scenario(chain: NetChain, pg, s3, bucket: str, name: str):
    """Yields Figures; afterwards: toxics gone, settle, the invariants, every process alive."""
    raw_start = chain.end_offsets(chain.raw_topics)
    t0 = now_ms()
    fig = Figures(name)
    try:
        yield fig
    finally:
        chain.toxi.reset()          # whatever the scenario did, the network is whole again
    t1 = now_ms()
    raw_end = chain.end_offsets(chain.raw_topics)
    settle_started = time.monotonic()
    try:
        chain.settle()
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{chain.logs()}") from None
    chain.check_ticks(pg, t0, t1, fig)
    chain.check_archive(s3, bucket, raw_start, raw_end, fig)
    fig.add(raw_records=sum(raw_end[k] - raw_start.get(k, 0) for k in raw_end), seconds=round((t1 - t0) / 1000),
            settle_s=round(time.monotonic() - settle_started, 1))
    fig.print()
    assert chain.dead() == {}, f"processes left dead: {chain.dead()}\n{chain.logs()}"


def test_latency_on_kafka_and_postgres(net_chain, pg, s3, stack):
    chain, toxi = net_chain, net_chain.toxi
    with scenario(chain, pg, s3, stack.s3_bucket, "net_latency_300ms_20s") as fig:
        for proxy in ("kafka", "postgres"):
            for stream in ("downstream", "upstream"):
                toxi.add_toxic(proxy, "latency", stream=stream, latency=300, jitter=100)
        time.sleep(20)
        fig.add(latency_ms=300, jitter_ms=100)


def test_connection_resets_on_postgres_and_s3(net_chain, pg, s3, stack):
    chain, toxi = net_chain, net_chain.toxi
    with scenario(chain, pg, s3, stack.s3_bucket, "net_reset_peer_pg_s3_10s") as fig:
        load_before = chain.committed_sum(chain.groups["load"], chain.transformed_topics)
        for proxy in ("postgres", "s3"):
            toxi.add_toxic(proxy, "reset_peer", stream="downstream", timeout=0)
        time.sleep(2)           # what was in flight when the resets began has settled one way or the other
        load_cut = chain.committed_sum(chain.groups["load"], chain.transformed_topics)
        time.sleep(8)
        load_end = chain.committed_sum(chain.groups["load"], chain.transformed_topics)
        fig.add(loader_committed_during_resets=load_end - load_cut,
                loader_committed_before=load_before)
    # the resets really cut the loader off Postgres: it committed nothing while they lasted
    assert load_end == load_cut, (load_cut, load_end)


def test_kafka_partition_20s(net_chain, pg, s3, stack):
    chain, toxi = net_chain, net_chain.toxi
    with scenario(chain, pg, s3, stack.s3_bucket, "net_kafka_partition_20s") as fig:
        raw_before = chain.end_offsets(chain.raw_topics)
        toxi.disable("kafka")
        time.sleep(2)
        cut = {g: chain.committed_sum(chain.groups[g], chain.raw_topics) for g in ("transform", "archive")}
        time.sleep(PARTITION_S - 2)
        end = {g: chain.committed_sum(chain.groups[g], chain.raw_topics) for g in ("transform", "archive")}
        raw_during = sum(v - raw_before.get(k, 0) for k, v in chain.end_offsets(chain.raw_topics).items())
        toxi.enable("kafka")
        fig.add(partition_s=PARTITION_S, raw_produced_during_partition=raw_during)
    print(f"net_kafka_partition_20s: restarts by the supervisor stand-in: "
          f"{ {name: p.restarts for name, p in chain.procs.items() if p.restarts} }")
    # the partition really cut the consumers off: records kept arriving, none was committed
    assert raw_during > 0
    assert end == cut, (cut, end)
