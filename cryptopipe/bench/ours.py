"""One step of the benchmark: our pipeline on the real stack at one offered tick rate, fed by a
private simulator:

    sim --ws--> extract binance|kucoin --> <ex>_raw_data<S> --> transform --> <ex>_transformed_data<S>
                                                   \\--> archive --> S3             \\--> load --> Postgres

Every process is a child of the bench (own consumer groups, own topics with suffix S, own metrics
ports, own spool directory, the bench's own database), so a step never mixes with the running
stack or with other tests, and its CPU and RSS can be read per process. The daemons run with
their shipped defaults unless the step's `Tuning` names a flag.

Why one module of ~540 lines: a step is one sequence (start the processes, settle, measure,
drain, compute the figures) over one set of process handles and probes; the helpers below it
(_settle, _drained, _latency, _figures) read that step's state and have no other caller.
"""
from __future__ import annotations

import os
import pickle
import pstats
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

from common.exchanges import EXCHANGES, plug
from common.kafka import create_topics, delete_topics
from cryptopipe.bench.database import empty_pipeline_tables
from cryptopipe.bench.feed import FeedPlan, plan
from cryptopipe.bench.measure import (MIN_SUSTAINED_WINDOW_S, CommitClock, LagProbe, lag_verdict, latency_percentiles,
                                      measure_window, metric_sum, rss_trend, scrape)
from cryptopipe.bench.procs import InfraSampler, Proc, SimProc, free_port, python
from cryptopipe.stack.kafka_auth import ARCHIVE_GROUP, LOAD_GROUP, TRANSFORM_GROUP, client_env

DAEMONS = ("transform", "load", "archive")
# the feed kept up when the extractors received this share of the ticks the model expects
FEED_SHARE = 0.95
# seconds a step that fell behind may take to drain (then its latency is measured too)
FAILED_DRAIN_S = 30.0
# the window opens once the consumers' lag is at most this many seconds of their feed
SETTLED_LAG_S = 2.0


@dataclass(frozen=True)
class Tuning:
    """Daemon flags; None = the daemon's shipped default (the flag is not passed)."""
    batch_size: int | None = None          # transform/load/archive --batch-size
    poll_timeout: float | None = None      # transform/load/archive --poll-timeout
    linger_ms: int | None = None           # extractors' producer --linger-ms
    batch_linger_ms: float | None = None   # KuCoin extractor's --batch-linger-ms
    archive_max_age: float | None = None   # archiver --max-age
    transform_workers: int = 1
    load_workers: int = 1
    archive_workers: int = 1
    replication: int = 1                   # the run's topics' replicas (3: min.insync.replicas=2, needs 3 brokers)

    def flags(self) -> list[str]:
        """The bench flags that reproduce this tuning (empty: the shipped defaults)."""
        out = []
        for name in ("batch_size", "poll_timeout", "linger_ms", "batch_linger_ms", "archive_max_age"):
            if getattr(self, name) is not None:
                out += ["--" + name.replace("_", "-"), f"{getattr(self, name):g}"]
        for name in ("transform_workers", "load_workers", "archive_workers", "replication"):
            if getattr(self, name) != 1:
                out += ["--" + name.replace("_", "-"), str(getattr(self, name))]
        return out

    def describe(self) -> str:
        return " ".join(self.flags()) or "shipped defaults"

    def workers(self, daemon: str) -> int:
        return getattr(self, f"{daemon}_workers")


@dataclass
class RunConfig:
    ticks_per_s: float = 5000.0       # offered ticks/s the simulator is set up for (all exchanges)
    symbols: int | None = None        # simulator symbols (None: feed.plan chooses)
    duration: float = 60.0            # measured window, s
    warmup: float = 10.0              # after the first rows are stored, before the window opens
    exchanges: tuple[str, ...] = EXCHANGES
    seed: int = 7
    sample_interval: float = 1.0      # counters, lag, RSS
    commit_clock_interval: float = 0.02
    drain_timeout: float = 120.0
    settle_timeout: float = 60.0      # after the warm-up, at most this long for the startup backlog to clear
    tuning: Tuning = field(default_factory=Tuning)
    archive: bool = True
    profile_dir: Path | None = None   # run every daemon under cProfile
    work_dir: Path = field(default_factory=lambda: Path("/tmp"))
    keep_topics: bool = False
    dsn: str | None = None            # the bench's database (database.bench_database)
    capture: Path | None = None       # keep the transformed records of a step that kept up here
    capture_max_ticks: int = 400_000
    drain: bool = True                # False: a step past capacity, nothing to wait for
    label: str = ""

    def at(self, ticks_per_s: float, **changes) -> "RunConfig":
        return replace(self, ticks_per_s=ticks_per_s, **changes)

    def feed(self) -> FeedPlan:
        return plan(self.ticks_per_s, self.symbols, self.seed, self.exchanges)


def sim_argv(feed: FeedPlan, seed: int) -> list[str]:
    return [python(), "-m", "sim", "--port", "0", "--rate", f"{feed.rate:.3f}", "--symbols", str(feed.symbols),
            "--seed", str(seed), "--truth-max", "0", "--log-level", "WARNING"]


def _wait(predicate, timeout: float, what: str, procs: list[Proc], interval: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for p in procs:
            if p.popen is not None and p.popen.poll() is not None:
                raise RuntimeError(f"{p.name} exited with {p.popen.returncode} while waiting for {what}:\n"
                                   f"{p.log_tail()}")
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}\n" +
                       "\n".join(f"--- {p.name}\n{p.log_tail(1500)}" for p in procs))


# functions in which a daemon waits (for Kafka, the socket, a timer): cProfile counts wall time,
# so they would top every list while using no CPU
_WAITS = ("'consume' of 'cimpl.Consumer'", "'poll' of 'cimpl", "'poll' of 'select.epoll'", "'select' of",
          "time.sleep", "'acquire' of '_thread.lock'", "'wait' of")


def profile_summary(path: Path, top: int = 15) -> dict:
    """The top functions by self time of a cProfile file, waits left out (and a .txt beside it
    with the full tables)."""
    if not path.exists():
        return {}
    stats = pstats.Stats(str(path))
    rows, waiting, busy = [], 0.0, 0.0
    for (filename, line, func), (cc, nc, tt, ct, _callers) in sorted(
            stats.stats.items(), key=lambda kv: kv[1][2], reverse=True):
        if any(w in func for w in _WAITS):
            waiting += tt
            continue
        busy += tt
        if len(rows) < top:
            rows.append({"function": f"{Path(filename).name}:{line}({func})", "calls": nc,
                         "self_s": round(tt, 3), "cumulative_s": round(ct, 3)})
    for row in rows:
        row["self_pct_of_busy"] = round(100 * row["self_s"] / busy, 1) if busy else None
    with open(path.with_suffix(".txt"), "w") as out:
        pstats.Stats(str(path), stream=out).sort_stats("tottime").print_stats(40)
        pstats.Stats(str(path), stream=out).sort_stats("cumulative").print_stats(40)
    return {"busy_s": round(busy, 2), "waiting_s": round(waiting, 2), "top": rows, "text": str(path.with_suffix(".txt"))}


def _sim_status(sim: SimProc) -> dict:
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(sim.urls["SIM_CONTROL_URL"] + "/status", timeout=10) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return {}


def capture_transformed(topics: list[str], path: Path, max_ticks: int) -> int:
    """The ticks.v1 records of `topics` (committed ones, from the start) into `path` (pickled
    [(topic, partition, value, headers)]), up to `max_ticks` ticks. Returns the ticks kept."""
    from confluent_kafka import TopicPartition

    from common.kafka import make_consumer

    c = make_consumer(f"bench-capture-{uuid.uuid4().hex[:8]}", {"log_level": 2})
    out, ticks = [], 0
    try:
        parts, ends = [], {}
        for t in topics:
            for p in c.list_topics(t, timeout=10).topics[t].partitions:
                _lo, hi = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)
                if hi > 0:
                    parts.append(TopicPartition(t, p, 0))
                    ends[(t, p)] = hi
        c.assign(parts)
        done: set = set()
        deadline, idle = time.monotonic() + 120, 0
        while len(done) < len(ends) and ticks < max_ticks and time.monotonic() < deadline and idle < 3:
            batch = c.consume(500, timeout=1.0)
            idle = 0 if batch else idle + 1
            for m in batch:
                if m.error() is not None:
                    continue
                headers = m.headers() or []
                count = int(dict(headers).get("count", b"0") or 0)
                out.append((m.topic(), m.partition(), m.value(), headers))
                ticks += count
                # a transactional topic ends with a commit marker: the last record is below hi
                if m.offset() >= ends[(m.topic(), m.partition())] - 2:
                    done.add((m.topic(), m.partition()))
    finally:
        c.close()
    with open(path, "wb") as f:
        pickle.dump(out, f)
    return ticks


def exchange_env(urls: dict[str, str]) -> dict[str, str]:
    """The exchange endpoint variables (the plugs' settings fields) among a simulator's URLs."""
    names = {name.upper() for e in EXCHANGES for name in plug(e).url_settings()}
    return {k: v for k, v in urls.items() if k in names}


def run_ours(cfg: RunConfig, settings, log=print) -> dict:
    feed = cfg.feed()
    tuning = cfg.tuning
    run_id = uuid.uuid4().hex[:8]
    suffix = f"_bench{run_id}"
    logs = cfg.work_dir / f"ours-{run_id}"
    logs.mkdir(parents=True, exist_ok=True)
    parts = settings.topic_partitions
    raw = [f"{e}_raw_data{suffix}" for e in cfg.exchanges]
    transformed = [f"{e}_transformed_data{suffix}" for e in cfg.exchanges]
    topics = {f"{e}_raw_data{suffix}": parts for e in EXCHANGES}
    topics.update({f"{e}_transformed_data{suffix}": parts for e in EXCHANGES})
    topics.update({f"{e}_dlq{suffix}": 1 for e in EXCHANGES})
    topics[f"pipeline_events{suffix}"] = 1
    if cfg.dsn:
        empty_pipeline_tables(cfg.dsn)
    min_isr = 2 if tuning.replication >= 3 else 1
    create_topics(topics, replication=tuning.replication,
                  configs={t: {"min.insync.replicas": str(min_isr)} for t in topics})
    log(f"ours{' ' + cfg.label if cfg.label else ''}: {cfg.ticks_per_s:,.0f} ticks/s "
        f"({feed.symbols} symbols, sim --rate {feed.rate:,.0f}), {tuning.describe()}; run {run_id}, logs in {logs}")

    procs: list[Proc] = []
    clock: CommitClock | None = None
    probes: dict[str, LagProbe] = {}
    daemon_env = {"POSTGRES_DSN": cfg.dsn} if cfg.dsn else {}
    try:
        sim = SimProc("sim", sim_argv(feed, cfg.seed), logs / "sim.log").start()
        procs.append(sim)
        env = {**daemon_env, **exchange_env(sim.urls)}
        # named after the daemons' default groups: their Kafka identities may use only those
        groups = {name: f"{group}-bench-{run_id}" for name, group in
                  (("transform", TRANSFORM_GROUP), ("load", LOAD_GROUP), ("archive", ARCHIVE_GROUP))}
        ports: dict[str, int] = {}

        def interpreter(name: str) -> list[str]:
            if cfg.profile_dir is None:
                return [python()]
            cfg.profile_dir.mkdir(parents=True, exist_ok=True)
            return [python(), "-m", "cProfile", "-o", str(cfg.profile_dir / f"{name}.prof")]

        def start(name: str, args: list[str], identity: str) -> Proc:
            ports[name] = free_port()
            argv = interpreter(name) + ["-m", "cryptopipe", *args, "--metrics-port", str(ports[name]),
                                        "--log-level", "WARNING"]
            # each process talks to Kafka as its daemon's identity (extra workers as theirs too)
            p = Proc(name, argv, logs / f"{name}.log", env={**env, **client_env(identity)}).start()
            procs.append(p)
            return p

        consumer_flags = ["--topic-suffix", suffix]
        if tuning.batch_size is not None:
            consumer_flags += ["--batch-size", str(tuning.batch_size)]
        if tuning.poll_timeout is not None:
            consumer_flags += ["--poll-timeout", f"{tuning.poll_timeout:g}"]
        names: dict[str, list[str]] = {d: [] for d in DAEMONS}
        for daemon in DAEMONS:
            if daemon == "archive" and not cfg.archive:
                continue
            for i in range(tuning.workers(daemon)):
                name = daemon if i == 0 else f"{daemon}-{i + 1}"
                extra = {"transform": ["--instance", f"{run_id}-{i}", "--exchanges", ",".join(cfg.exchanges)],
                         "load": ["--retention-days", "0"],
                         "archive": (["--max-age", f"{tuning.archive_max_age:g}"]
                                     if tuning.archive_max_age is not None else [])}[daemon]
                start(name, [daemon, "--group", groups[daemon], *extra, *consumer_flags], daemon)
                names[daemon].append(name)
        _wait(lambda: all(scrape(ports[n]) for n in ports), 60, "the consumers' metrics", procs)

        for ex in cfg.exchanges:
            extra = ["--spool-dir", str(logs / f"spool-{ex}"), "--label", f"bench{run_id}", "--topic-suffix", suffix]
            if tuning.linger_ms is not None:
                extra += ["--linger-ms", str(tuning.linger_ms)]
            if tuning.batch_linger_ms is not None and plug(ex).BATCHED_FRAMES:
                extra += ["--batch-linger-ms", f"{tuning.batch_linger_ms:g}"]
            start(f"extract-{ex}", ["extract", ex, *extra], f"extract-{ex}")

        def total(daemon_names, metric, **labels) -> float:
            return sum(metric_sum(scrape(ports[n]), metric, **labels) for n in daemon_names)

        extractors = [f"extract-{ex}" for ex in cfg.exchanges]
        _wait(lambda: total(names["load"], "cryptopipe_consumer_written_total", kind="ticks") > 0, 120,
              "the first rows in Postgres", procs, interval=0.5)
        log(f"ours: first rows stored; warming up {cfg.warmup:.0f}s")
        time.sleep(cfg.warmup)

        probes = {"transform": LagProbe(groups["transform"], raw), "load": LagProbe(groups["load"], transformed)}
        if cfg.archive:
            probes["archive"] = LagProbe(groups["archive"], raw)
        settle_s, settled = _settle(probes, cfg.settle_timeout)
        if not settled:
            log(f"ours: the startup backlog did not clear within {cfg.settle_timeout:.0f}s; measuring anyway")
        series: dict[str, list] = {"t": [], "extracted": [], "loaded": [], "archived": [], "archive_read": [],
                                   "dlq": [], **{f"lag_{k}": [] for k in probes}, **{f"high_{k}": [] for k in probes}}
        infra = InfraSampler()

        def sample(now: float) -> None:
            series["t"].append(now)
            series["extracted"].append(total(extractors, "cryptopipe_extractor_ticks_total"))
            series["loaded"].append(total(names["load"], "cryptopipe_consumer_written_total", kind="ticks"))
            series["archived"].append(total(names["archive"], "cryptopipe_consumer_written_total", kind="records"))
            series["archive_read"].append(total(names["archive"], "cryptopipe_consumer_records_total"))
            series["dlq"].append(total(names["transform"], "cryptopipe_consumer_dlq_total"))
            for k, probe in probes.items():
                s = probe.sample()
                series[f"lag_{k}"].append(None if s is None else s[0])
                series[f"high_{k}"].append(None if s is None else s[1])
            for p in procs:
                if p.popen is not None and p.popen.poll() is not None and p is not sim:
                    log(f"ours: {p.name} exited with {p.popen.returncode}; restarting it (as supervisord would)")
                    p.restart()
                p.sample(now)
            infra.sample()

        sim_before = _sim_status(sim)
        clock = CommitClock(dsn=cfg.dsn, interval=cfg.commit_clock_interval)
        t0_wall, t1_wall = measure_window(clock, procs, infra, sample, cfg.duration, cfg.sample_interval, log,
                                          "ours")
        sim_after = _sim_status(sim)
        if not sim.alive():
            raise RuntimeError(f"the simulator exited {sim.popen.returncode}: {sim.log_tail(1500)}")
        figures = _figures(feed, series, probes, sim_before, sim_after, procs, (t1_wall - t0_wall).total_seconds())
        drain_s = latency = rows_in_window = captured = None
        # stop the feed and let the pipeline drain, so every tick received in the window is
        # committed and its latency measured; a step that fell behind gets a short drain budget
        # (its latency is measured when the backlog clears in it), a step past capacity none
        budget = cfg.drain_timeout if figures["kept_up"] else (0.0 if not cfg.drain else FAILED_DRAIN_S)
        if budget > 0:
            for p in procs:
                if not p.alive() and p is not sim:
                    p.restart()
            for p in procs:
                if p.name.startswith("extract-"):
                    p.stop()
            drain_start = time.monotonic()
            drained = _drained(probes, budget, [p for p in procs if not p.name.startswith("extract-")])
            drain_s = time.monotonic() - drain_start
            if not drained and figures["kept_up"]:
                raise RuntimeError(f"the pipeline did not drain within {budget:.0f}s after a step that kept up")
            if drained:
                time.sleep(max(0.2, cfg.commit_clock_interval * 5))
                clock.stop()
                latency, rows_in_window = _latency(cfg, clock, t0_wall, t1_wall)
                # the limit lines use the records of the highest step that kept up (of any drained
                # step when none did)
                if cfg.capture is not None and (figures["kept_up"] or not cfg.capture.exists()):
                    captured = capture_transformed(transformed, cfg.capture, cfg.capture_max_ticks)
        clock_samples = len(clock.samples)
    finally:
        if clock is not None and clock._thread is not None and clock._thread.is_alive():  # noqa: SLF001
            clock.stop()
        for p in reversed(procs):
            p.stop()
        for probe in probes.values():
            probe.close()
        if not cfg.keep_topics:
            delete_topics(topics, wait_gone=15.0)

    stored = figures["stored_ticks_per_s"]
    processes = []
    for p in procs:
        role = "simulator" if p is sim else "pipeline"
        cpu = p.cpu_percent()
        processes.append({"process": p.name, "role": role, "pid": p.pid, "cpu_percent": cpu,
                          "cpu_us_per_stored_tick": cpu_us_per_tick(cpu, stored), "restarts": p.restarts,
                          **rss_trend(p.rss_samples)})
    for row in infra.rows():
        processes.append({**row, "role": "shared", "cpu_us_per_stored_tick": cpu_us_per_tick(row["cpu_percent"], stored)})
    profiles = {}
    if cfg.profile_dir is not None:
        for p in procs:
            if p is not sim:
                profiles[p.name] = profile_summary(cfg.profile_dir / f"{p.name}.prof")
    t = series["t"]
    return {
        "system": "cryptopipe",
        "label": cfg.label,
        "run_id": run_id,
        "target_ticks_per_s": cfg.ticks_per_s,
        "feed": feed.as_dict(),
        "settings": {"tuning": tuning.describe(), "flags": tuning.flags(), "archive": cfg.archive,
                     "profiled": cfg.profile_dir is not None},
        "window": {"start": t0_wall.isoformat(), "end": t1_wall.isoformat(),
                   "seconds": (t1_wall - t0_wall).total_seconds()},
        **figures,
        "rows_in_window_postgres": rows_in_window,
        "settle_seconds": settle_s, "settled": settled,
        "drain_seconds": drain_s,
        "latency": latency,
        "commit_clock_samples": clock_samples,
        "cpu_us_per_stored_tick": cpu_totals(processes),
        "processes": processes,
        "profiles": profiles,
        "captured_ticks": captured,
        "logs": str(logs),
        "series": {"t": [round(x - t[0], 2) for x in t] if t else [], **{k: v for k, v in series.items() if k != "t"}},
    }


def _settle(probes: dict, timeout: float) -> tuple[float, bool]:
    """Wait until the transformer's and loader's lag is at most SETTLED_LAG_S of their feed: the
    extractors start streaming while the consumers still join their groups, and a window that
    opens on that backlog measures its drain, not the steady state. (seconds waited, settled)"""
    started = time.monotonic()
    prev = {k: probes[k].sample() for k in ("transform", "load")}
    t_prev = time.monotonic()
    while time.monotonic() - started < timeout:
        time.sleep(2.0)
        cur = {k: probes[k].sample() for k in ("transform", "load")}
        now = time.monotonic()
        settled = True
        for k, c in cur.items():
            p = prev[k]
            if c is None or p is None:
                settled = False
                continue
            inflow = (c[1] - p[1]) / (now - t_prev)
            if c[0] > 0 and (inflow <= 0 or c[0] / inflow > SETTLED_LAG_S):
                settled = False
        if settled:
            return now - started, True
        prev, t_prev = cur, now
    return time.monotonic() - started, False


def _drained(probes: dict, budget: float, procs: list[Proc]) -> bool:
    """True once the transformer and loader have committed everything (within `budget` s)."""
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if all((probes[k].lag() or 0) == 0 for k in ("transform", "load")):
            return True
        for p in procs:
            if p.popen is not None and p.popen.poll() is not None:
                raise RuntimeError(f"{p.name} exited with {p.popen.returncode} while draining:\n{p.log_tail()}")
        time.sleep(0.5)
    return False


def _latency(cfg: RunConfig, clock: CommitClock, t0_wall, t1_wall) -> tuple[dict, int]:
    """Receipt -> commit percentiles of the rows received in the window, and their count."""
    from common.db import connect

    conn = connect(cfg.dsn)
    conn.autocommit = True
    try:
        where = "exchange = ANY(%s) AND event_time >= %s AND received_at >= %s AND received_at < %s"
        params = (list(cfg.exchanges), t0_wall - timedelta(hours=2), t0_wall, t1_wall)
        latency = latency_percentiles(conn, clock, "ticks", where, params)
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM ticks WHERE {where}", params)
            return latency, cur.fetchone()[0]
    finally:
        conn.close()


def _figures(feed: FeedPlan, series: dict, probes: dict, sim_before: dict, sim_after: dict, procs: list[Proc],
             window: float) -> dict:
    """Rates, the lag test of every group, the feed check and the step's verdict."""
    t = series["t"]
    span = t[-1] - t[0] if len(t) >= 2 else 0.0

    def rate(key: str) -> float:
        v = [x for x in series[key] if x is not None]
        return (v[-1] - v[0]) / span if span and len(v) >= 2 else 0.0

    lag = {}
    for k in probes:
        inflow = rate(f"high_{k}")
        if k == "archive":
            # the archiver commits when an object closes (every 60 s by default), so its committed
            # lag is a sawtooth of up to an object of feed; what it has read (its own counter) is
            # what shows whether it keeps up: it reads, cuts and uploads in one loop
            pts = [(ti, h - r) for ti, h, r in zip(t, series["high_archive"], series["archive_read"]) if h is not None]
            committed = [v for v in series["lag_archive"] if v is not None]
            lag[k] = {**lag_verdict(pts, inflow), "measure": "read lag (records in the raw topics - records read)",
                      "committed_max": max(committed) if committed else None,
                      "committed_mean": sum(committed) / len(committed) if committed else None}
        else:
            pts = [(ti, v) for ti, v in zip(t, series[f"lag_{k}"]) if v is not None]
            lag[k] = {**lag_verdict(pts, inflow), "measure": "committed lag"}
    offered, stored = rate("extracted"), rate("loaded")
    skips = (sim_after.get("overload_skips", 0) or 0) - (sim_before.get("overload_skips", 0) or 0)
    feed_ok = offered >= FEED_SHARE * feed.ticks_per_s and skips == 0
    restarted = [p.name for p in procs if p.restarts]
    grew = [k for k, v in lag.items() if v["grows"]]
    kept_up = feed_ok and not grew and not restarted and stored > 0
    if restarted:
        verdict = f"not sustained: {', '.join(restarted)} exited during the step"
    elif grew:
        verdict = f"not sustained: lag grew ({', '.join(grew)})"
    elif not feed_ok:
        verdict = (f"not sustained: the feed fell short ({offered:,.0f} of {feed.ticks_per_s:,.0f} ticks/s offered"
                   f"{f', simulator skipped {skips} overloaded steps' if skips else ''})")
    elif window < MIN_SUSTAINED_WINDOW_S:
        verdict = f"kept up over {window:.0f} s (a sustained figure needs a window of {MIN_SUSTAINED_WINDOW_S:.0f} s)"
    else:
        verdict = "sustained"
    return {"offered_ticks_per_s": offered, "stored_ticks_per_s": stored,
            "archived_records_per_s": rate("archived"), "dlq_records": (series["dlq"][-1] - series["dlq"][0])
            if len(series["dlq"]) >= 2 else 0.0,
            "lag": lag,
            "feed_check": {"expected_ticks_per_s": feed.ticks_per_s, "offered_share": offered / feed.ticks_per_s
                           if feed.ticks_per_s else None, "sim_overload_skips": skips, "ok": feed_ok},
            "kept_up": kept_up, "sustained": kept_up and window >= MIN_SUSTAINED_WINDOW_S, "verdict": verdict}


def cpu_us_per_tick(cpu_percent, ticks_per_s) -> float | None:
    """CPU microseconds a process spent per stored tick (the figure that bounds a 2-core machine)."""
    if cpu_percent is None or not ticks_per_s:
        return None
    return cpu_percent / 100.0 * 1e6 / ticks_per_s


def cpu_totals(processes: list[dict]) -> dict:
    """CPU µs per stored tick summed by role (pipeline / simulator / shared) and over all."""
    out: dict[str, float] = {}
    for p in processes:
        us = p.get("cpu_us_per_stored_tick")
        if us is None:
            continue
        out[p["role"]] = out.get(p["role"], 0.0) + us
        out["all"] = out.get("all", 0.0) + us
    return out


def env_summary() -> dict:
    import platform

    import psutil

    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            # other work on the machine skews every figure: say how busy it was
            "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()]}
