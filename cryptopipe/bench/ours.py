"""One end-to-end run of our pipeline on the real stack, fed by a private simulator:

    sim --ws--> extract binance|kucoin --> <ex>_raw_data<S> --> transform --> <ex>_transformed_data<S>
                                                   \\--> archive --> S3             \\--> load --> Postgres

Every process is a child of the bench (own consumer groups, own topics with suffix S, own metrics
ports, own spool directory), so a run never mixes with the running stack or with other tests, and
its CPU and RSS can be read per process.
"""
from __future__ import annotations

import os
import pstats
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from common.exchanges import EXCHANGES, plug
from common.kafka import create_topics, delete_topics
from cryptopipe.bench.measure import (CommitClock, LagProbe, lag_is_bounded, latency_percentiles, measure_window,
                                      metric_sum, scrape, slope)
from cryptopipe.bench.procs import InfraSampler, Proc, SimProc, free_port, python
from cryptopipe.stack.kafka_auth import ARCHIVE_GROUP, LOAD_GROUP, TRANSFORM_GROUP, client_env


@dataclass
class RunConfig:
    duration: float = 30.0            # measured window, s
    warmup: float = 5.0               # after the first ticks arrive, before the window opens
    rate: float = 5000.0              # simulator trades/s per exchange
    symbols: int = 500                # simulator symbols per exchange
    exchanges: tuple[str, ...] = EXCHANGES
    seed: int = 7
    sample_interval: float = 1.0      # counters, lag, RSS
    commit_clock_interval: float = 0.02
    drain_timeout: float = 120.0
    batch_size: int = 5000
    poll_timeout: float = 0.5         # the daemons' --poll-timeout (their default 0.5)
    linger_ms: int = 5                # the extractors' --linger-ms (their default 5)
    profile_dir: Path | None = None   # run transform, load and the extractors under cProfile
    work_dir: Path = field(default_factory=lambda: Path("/tmp"))
    keep_topics: bool = False
    archive: bool = True
    archive_max_age: float | None = None   # the archiver's --max-age (its default 60 s)


def sim_argv(cfg: RunConfig) -> list[str]:
    return [python(), "-m", "sim", "--port", "0", "--rate", str(cfg.rate), "--symbols", str(cfg.symbols),
            "--seed", str(cfg.seed), "--truth-max", "0", "--log-level", "WARNING"]


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


def _profile_summary(path: Path, top: int = 15) -> list[dict]:
    if not path.exists():
        return []
    stats = pstats.Stats(str(path))
    total = stats.total_tt or 1.0
    rows = []
    for (filename, line, func), (cc, nc, tt, ct, _callers) in sorted(
            stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]:
        rows.append({"function": f"{Path(filename).name}:{line}({func})", "calls": nc,
                     "self_s": round(tt, 3), "self_pct": round(100 * tt / total, 1), "cumulative_s": round(ct, 3)})
    with open(path.with_suffix(".txt"), "w") as out:
        pstats.Stats(str(path), stream=out).sort_stats("tottime").print_stats(40)
        pstats.Stats(str(path), stream=out).sort_stats("cumulative").print_stats(40)
    return rows


def exchange_env(urls: dict[str, str]) -> dict[str, str]:
    """The exchange endpoint variables (the plugs' settings fields) among a simulator's URLs."""
    names = {name.upper() for e in EXCHANGES for name in plug(e).url_settings()}
    return {k: v for k, v in urls.items() if k in names}


def run_ours(cfg: RunConfig, settings, log=print) -> dict:
    run_id = uuid.uuid4().hex[:8]
    suffix = f"_bench{run_id}"
    logs = cfg.work_dir / f"ours-{run_id}"
    logs.mkdir(parents=True, exist_ok=True)
    parts = settings.topic_partitions
    topics = {f"{e}_raw_data{suffix}": parts for e in EXCHANGES}
    topics.update({f"{e}_transformed_data{suffix}": parts for e in EXCHANGES})
    topics.update({f"{e}_dlq{suffix}": 1 for e in EXCHANGES})
    topics[f"pipeline_events{suffix}"] = 1
    create_topics(topics)
    log(f"ours: run {run_id}, topics *{suffix}, logs in {logs}")

    procs: list[Proc] = []
    clock: CommitClock | None = None
    probes: dict[str, LagProbe] = {}
    try:
        sim = SimProc("sim", sim_argv(cfg), logs / "sim.log").start()
        procs.append(sim)
        sim_env = exchange_env(sim.urls)
        # named after the daemons' default groups: their Kafka identities may use only those
        groups = {name: f"{group}-bench-{run_id}" for name, group in
                  (("transform", TRANSFORM_GROUP), ("load", LOAD_GROUP), ("archive", ARCHIVE_GROUP))}
        ports: dict[str, int] = {}

        def interpreter(name: str, profile: bool) -> list[str]:
            if not profile or cfg.profile_dir is None:
                return [python()]
            cfg.profile_dir.mkdir(parents=True, exist_ok=True)
            return [python(), "-m", "cProfile", "-o", str(cfg.profile_dir / f"{name}.prof")]

        def daemon(name: str, args: list[str], profile: bool = False) -> Proc:
            ports[name] = free_port()
            argv = interpreter(name, profile) + ["-m", "cryptopipe", *args, "--metrics-port", str(ports[name])]
            return Proc(name, argv, logs / f"{name}.log", env={**sim_env, **client_env(name)}).start()

        common_args = ["--topic-suffix", suffix, "--batch-size", str(cfg.batch_size),
                       "--poll-timeout", str(cfg.poll_timeout), "--log-level", "WARNING"]
        procs.append(daemon("transform", ["transform", "--group", groups["transform"], "--instance", run_id,
                                          "--exchanges", ",".join(cfg.exchanges), *common_args], profile=True))
        procs.append(daemon("load", ["load", "--group", groups["load"], "--retention-days", "0", *common_args],
                            profile=True))
        if cfg.archive:
            extra = ["--max-age", str(cfg.archive_max_age)] if cfg.archive_max_age else []
            procs.append(daemon("archive", ["archive", "--group", groups["archive"], *extra, *common_args]))
        _wait(lambda: all(scrape(ports[n]) for n in ports), 60, "transform/load/archive metrics", procs)

        for ex in cfg.exchanges:
            ports[f"extract-{ex}"] = free_port()
            argv = [*interpreter(f"extract-{ex}", True), "-m", "cryptopipe.bench.extract_isolated", suffix, ex,
                    "--metrics-port", str(ports[f"extract-{ex}"]), "--spool-dir", str(logs / f"spool-{ex}"),
                    "--label", f"bench{run_id}", "--linger-ms", str(cfg.linger_ms), "--log-level", "WARNING"]
            procs.append(Proc(f"extract-{ex}", argv, logs / f"extract-{ex}.log",
                              env={**sim_env, **client_env(f"extract-{ex}")}).start())

        def extracted() -> float:
            return sum(metric_sum(scrape(ports[f"extract-{ex}"]), "cryptopipe_extractor_ticks_total")
                       for ex in cfg.exchanges)

        def loaded() -> float:
            return metric_sum(scrape(ports["load"]), "cryptopipe_consumer_written_total", kind="ticks")

        _wait(lambda: loaded() > 0, 90, "the first rows in Postgres", procs, interval=0.5)
        log(f"ours: first rows stored; warming up {cfg.warmup:.0f}s")
        time.sleep(cfg.warmup)

        raw = [f"{e}_raw_data{suffix}" for e in cfg.exchanges]
        probes = {"transform": LagProbe(groups["transform"], raw),
                  "load": LagProbe(groups["load"], [f"{e}_transformed_data{suffix}" for e in cfg.exchanges])}
        if cfg.archive:
            probes["archive"] = LagProbe(groups["archive"], raw)
        series: dict[str, list] = {"t": [], "extracted": [], "loaded": [], "archived": [], "dlq": [],
                                   **{f"lag_{k}": [] for k in probes}}
        infra = InfraSampler()

        def sample(now: float) -> None:
            series["t"].append(now)
            series["extracted"].append(extracted())
            series["loaded"].append(loaded())
            series["archived"].append(metric_sum(scrape(ports["archive"]), "cryptopipe_consumer_written_total",
                                                 kind="records") if cfg.archive else 0.0)
            series["dlq"].append(metric_sum(scrape(ports["transform"]), "cryptopipe_consumer_dlq_total"))
            for k, probe in probes.items():
                series[f"lag_{k}"].append(probe.lag())
            for p in procs:
                if p.popen is not None and p.popen.poll() is not None and p is not sim:
                    log(f"ours: {p.name} exited with {p.popen.returncode}; restarting it (as supervisord would)")
                    p.restart()
                p.sample(now)
            infra.sample()

        clock = CommitClock(interval=cfg.commit_clock_interval)
        t0_wall, t1_wall = measure_window(clock, procs, infra, sample, cfg.duration, cfg.sample_interval, log,
                                          "ours")
        for p in procs:
            if not p.alive() and p is not sim:
                log(f"ours: {p.name} exited with {p.popen.returncode} at the end of the window; restarting it to drain")
                p.restart()
        if not sim.alive():
            raise RuntimeError(f"the simulator exited {sim.popen.returncode}: {sim.log_tail(1500)}")

        # stop the feed, let the pipeline drain, so every tick received in the window is committed
        for p in procs:
            if p.name.startswith("extract-"):
                p.stop()
        drain_start = time.monotonic()
        _wait(lambda: all((probes[k].lag() or 0) == 0 for k in ("transform", "load")), cfg.drain_timeout,
              "the pipeline to drain", [p for p in procs if not p.name.startswith("extract-")], interval=0.5)
        drain_s = time.monotonic() - drain_start
        time.sleep(max(0.2, cfg.commit_clock_interval * 5))
        clock.stop()
        clock_samples = len(clock.samples)

        from common.db import connect

        conn = connect()
        conn.autocommit = True
        try:
            where = ("exchange = ANY(%s) AND event_time >= %s AND received_at >= %s AND received_at < %s")
            params = (list(cfg.exchanges), t0_wall - timedelta(hours=2), t0_wall, t1_wall)
            latency = latency_percentiles(conn, clock, "ticks", where, params)
            with conn.cursor() as cur:
                cur.execute(f"SELECT count(*) FROM ticks WHERE {where}", params)
                rows_in_window = cur.fetchone()[0]
        finally:
            conn.close()
    finally:
        if clock is not None and clock._thread is not None and clock._thread.is_alive():  # noqa: SLF001
            clock.stop()
        for p in reversed(procs):
            p.stop()
        for probe in probes.values():
            probe.close()
        if not cfg.keep_topics:
            delete_topics(topics, wait_gone=15.0)

    window = (t1_wall - t0_wall).total_seconds()
    t = series["t"]

    def delta(key: str) -> float:
        return series[key][-1] - series[key][0] if len(series[key]) >= 2 else 0.0

    span = t[-1] - t[0] if len(t) >= 2 else window
    lag = {}
    for k in probes:
        pts = [(ti, v) for ti, v in zip(t, series[f"lag_{k}"]) if v is not None]
        values = [v for _, v in pts]
        lag[k] = {"max": max(values) if values else None, "last": values[-1] if values else None,
                  "mean": sum(values) / len(values) if values else None,
                  "slope_per_s": slope(pts)}
    offered = delta("extracted") / span if span else 0.0
    sustained = delta("loaded") / span if span else 0.0
    load_slope = lag["load"]["slope_per_s"] or 0.0
    transform_slope = lag["transform"]["slope_per_s"] or 0.0
    processes = []
    for p in procs:
        rss = [r for _, r in p.rss_samples]
        tenth = max(1, len(rss) // 10)
        processes.append({"process": p.name, "pid": p.pid, "cpu_percent": p.cpu_percent(),
                          "peak_rss_mb": p.peak_rss / 2**20, "restarts": p.restarts,
                          "rss_first_mb": (sum(rss[:tenth]) / tenth) / 2**20 if rss else None,
                          "rss_last_mb": (sum(rss[-tenth:]) / tenth) / 2**20 if rss else None,
                          # every sample (1 s, or 10 s in a soak): the flatness is in the shape, not two means
                          "rss_mb_series": [round(r / 2**20, 1) for r in rss]})
    profiles = {}
    if cfg.profile_dir is not None:
        for name in ("transform", "load", *(f"extract-{ex}" for ex in cfg.exchanges)):
            profiles[name] = _profile_summary(cfg.profile_dir / f"{name}.prof")
    return {
        "system": "cryptopipe",
        "run_id": run_id,
        "window": {"start": t0_wall.isoformat(), "end": t1_wall.isoformat(), "seconds": window},
        "sim": {"rate_per_exchange": cfg.rate, "symbols": cfg.symbols, "exchanges": list(cfg.exchanges),
                "seed": cfg.seed},
        "settings": {"batch_size": cfg.batch_size, "poll_timeout": cfg.poll_timeout, "linger_ms": cfg.linger_ms,
                     "archive": cfg.archive, "archive_max_age": cfg.archive_max_age},
        "offered_ticks_per_s": offered,
        "sustained_ticks_per_s": sustained,
        "rows_in_window_postgres": rows_in_window,
        "archived_records_per_s": delta("archived") / span if span else 0.0,
        "dlq_records": delta("dlq"),
        "lag": lag,
        "lag_bounded": lag_is_bounded(load_slope + transform_slope, span, offered, cfg.batch_size),
        "drain_seconds": drain_s,
        "latency": latency,
        "commit_clock_samples": clock_samples,
        "processes": processes + infra.rows(),
        "profiles": profiles,
        "logs": str(logs),
        "series": {"t": [round(x - t[0], 2) for x in t] if t else [], **{k: v for k, v in series.items() if k != "t"}},
    }


def env_summary() -> dict:
    import platform

    import psutil

    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            # other work on the machine skews every figure: say how busy it was
            "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()]}
