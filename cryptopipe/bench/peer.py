"""The peer, side by side: cryptofeed from PyPI with its stock Kafka and Postgres ticker backends,
fed by the same simulator settings on the same machine, into the same Kafka and Postgres (its own
topic and table), measured the same way as our pipeline.

Version: cryptofeed 2.4.1, the newest release that runs on Python 3.11 and speaks the KuCoin
protocol the exchanges document and the simulator serves (bullet-public token, `/market/ticker`).
3.0.1 needs Python >= 3.13 and its KuCoin adapter speaks KuCoin's newer `x-push-spot` protocol,
which the simulator does not serve. It lives in its own venv (created on first use, cached outside
the repository) because its pins differ from ours.

Channels: cryptofeed's TICKER is Binance `<symbol>@bookTicker` (one update per trade) and KuCoin
`/market/ticker:<symbols>` (one per trade); ours are the all-market `!miniTicker@arr` (one per
changed symbol per second) and `/market/ticker:all` (one per trade). On KuCoin the two receive
the same updates; the report gives what each was offered and what each stored.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

from common.kafka import create_topics, delete_topics
from cryptopipe.bench.measure import (MIN_SUSTAINED_WINDOW_S, CommitClock, lag_verdict, latency_percentiles,
                                      measure_window, rss_trend)
from cryptopipe.bench.ours import SETTLED_LAG_S, RunConfig, cpu_totals, cpu_us_per_tick, sim_argv
from cryptopipe.bench.procs import InfraSampler, Proc, SimProc

CRYPTOFEED_VERSION = "2.4.1"
PEER_PINS = (f"cryptofeed=={CRYPTOFEED_VERSION}", "aiokafka==0.14.0", "asyncpg==0.32.0")
LAUNCHER = Path(__file__).resolve().parent / "cryptofeed_launcher.py"


class PeerUnavailable(RuntimeError):
    """cryptofeed could not be installed or started here; the message says exactly why."""


def venv_dir() -> Path:
    from common.settings import cache_home

    return cache_home() / f"venv-cryptofeed-{CRYPTOFEED_VERSION}"


def ensure_venv(log=print) -> Path:
    """The peer's interpreter; creates the venv with the pinned packages on first use."""
    venv = venv_dir()
    py = venv / "bin" / "python"
    marker = venv / ".bench-ready"
    if marker.exists() and marker.read_text() == "\n".join(PEER_PINS) and py.exists():
        return py
    log(f"peer: creating {venv} with {' '.join(PEER_PINS)} (once)")
    base = "python3.11"
    try:
        subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True, text=True,
                       timeout=300)
        cache = venv.parent / "pip-cache"
        r = subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "--cache-dir", str(cache),
                            *PEER_PINS], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        raise PeerUnavailable(f"could not create the cryptofeed venv: {exc}") from None
    if r.returncode != 0:
        raise PeerUnavailable(f"pip install {' '.join(PEER_PINS)} failed (exit {r.returncode}):\n"
                              f"{(r.stderr or r.stdout)[-3000:]}")
    marker.write_text("\n".join(PEER_PINS))
    return py


def _pg_env(dsn: str) -> dict[str, str]:
    from psycopg2.extensions import parse_dsn

    d = parse_dsn(dsn)
    env = {"PGHOST": d.get("host", "127.0.0.1"), "PGPORT": str(d.get("port", 5432)),
           "PGUSER": d.get("user", ""), "PGDATABASE": d.get("dbname", "")}
    if d.get("password"):
        env["PGPASSWORD"] = d["password"]
    return env


# cryptofeed's documented ticker table, plus the commit-side timestamp (a trailing DEFAULT column:
# its positional INSERT fills the first seven and leaves this one to its default)
TABLE_DDL = """CREATE TABLE {name} (
    id bigserial PRIMARY KEY,
    timestamp timestamp,
    receipt_timestamp timestamp,
    exchange text,
    symbol text,
    bid numeric,
    ask numeric,
    ingested_at timestamptz NOT NULL DEFAULT now())"""


def run_cryptofeed(cfg: RunConfig, settings, log=print) -> dict:
    py = ensure_venv(log)
    run_id = uuid.uuid4().hex[:8]
    table = f"bench_cryptofeed_ticker_{run_id}"
    topic = f"bench_cryptofeed_ticker_{run_id}"
    logs = cfg.work_dir / f"cryptofeed-{run_id}"
    logs.mkdir(parents=True, exist_ok=True)
    from common.db import connect

    feed = cfg.feed()
    conn = connect(cfg.dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(TABLE_DDL.format(name=table))  # bench-generated identifier, no user input
    create_topics({topic: settings.topic_partitions})
    log(f"peer: cryptofeed {CRYPTOFEED_VERSION} at our {cfg.ticks_per_s:,.0f} ticks/s feed ({feed.symbols} symbols, "
        f"sim --rate {feed.rate:,.0f}), table {table}, topic {topic}, logs in {logs}")
    procs: list[Proc] = []
    closers: list = []
    clock = None
    stats_path = logs / "stats.json"
    drain_s = latency = rows_in_window = None
    per_exchange: dict = {}
    try:
        sim = SimProc("sim", sim_argv(feed, cfg.seed), logs / "sim.log").start()
        procs.append(sim)
        env = _pg_env(cfg.dsn or settings.postgres_dsn)
        argv = [str(py), str(LAUNCHER), "--binance-ws", sim.urls["BINANCE_WS_URL"],
                "--binance-rest", sim.urls["BINANCE_REST_URL"], "--kucoin-rest", sim.urls["KUCOIN_REST_URL"],
                "--exchanges", ",".join(cfg.exchanges), "--kafka", settings.kafka_bootstrap_servers,
                "--topic", topic, "--table", table, "--stats", str(stats_path)]
        # cryptofeed talks to Kafka as the bench does (admin): its topic is outside every daemon's ACLs
        kafka = {"KAFKA_SECURITY_PROTOCOL": settings.kafka_security_protocol,
                 "KAFKA_SASL_MECHANISM": settings.kafka_sasl_mechanism,
                 "KAFKA_SASL_USERNAME": settings.kafka_sasl_username,
                 "KAFKA_SASL_PASSWORD": settings.kafka_sasl_password.get_secret_value()}
        cf = Proc("cryptofeed", argv, logs / "cryptofeed.log", env={**env, **kafka, "PYTHONPATH": ""}).start()
        procs.append(cf)

        def stored() -> int:
            # the newest id of its bigserial key: an index probe, where count(*) once a second would
            # scan a growing table on the peer's Postgres CPU bill
            with conn.cursor() as cur:
                cur.execute(f"SELECT coalesce(max(id), 0) FROM {table}")
                return cur.fetchone()[0]

        def received() -> int:
            try:
                return int(json.loads(stats_path.read_text())["received"])
            except (OSError, ValueError, KeyError):
                return 0

        from confluent_kafka import TopicPartition

        from common.kafka import make_consumer

        watermarks = make_consumer(f"bench-{run_id}-w", {"log_level": 2})
        closers.append(watermarks.close)
        topic_parts = [TopicPartition(topic, p) for p in watermarks.list_topics(topic, timeout=10).topics[topic].partitions]

        def kafka_records() -> int:
            return sum(watermarks.get_watermark_offsets(tp, timeout=5)[1] for tp in topic_parts)

        deadline = time.monotonic() + 120
        while stored() == 0:
            if not cf.alive():
                raise PeerUnavailable(f"cryptofeed exited with {cf.popen.returncode} before storing a row:\n"
                                      f"{cf.log_tail(3000)}")
            if time.monotonic() > deadline:
                raise PeerUnavailable(f"cryptofeed stored no row within 120 s:\n{cf.log_tail(3000)}")
            time.sleep(0.5)
        log(f"peer: first rows stored; warming up {cfg.warmup:.0f}s")
        time.sleep(cfg.warmup)
        # as for ours: the window opens once its Postgres backlog is at most SETTLED_LAG_S of feed
        settle_start = time.monotonic()
        settled = False
        prev, t_prev = received(), time.monotonic()
        while not settled and time.monotonic() - settle_start < cfg.settle_timeout:
            time.sleep(2.0)
            got, now = received(), time.monotonic()
            inflow = (got - prev) / (now - t_prev)
            settled = inflow > 0 and got - stored() <= SETTLED_LAG_S * inflow
            prev, t_prev = got, now
        settle_s = time.monotonic() - settle_start

        series: dict[str, list] = {"t": [], "received": [], "stored": [], "kafka": []}
        infra = InfraSampler()

        def sample(now: float) -> None:
            series["t"].append(now)
            series["received"].append(received())
            series["stored"].append(stored())
            series["kafka"].append(kafka_records())
            for p in procs:
                p.sample(now)
            infra.sample()

        clock = CommitClock(dsn=cfg.dsn, interval=cfg.commit_clock_interval)
        t0, t1 = measure_window(clock, procs, infra, sample, cfg.duration, cfg.sample_interval, log, "peer")
        if not cf.alive():
            raise PeerUnavailable(f"cryptofeed exited with {cf.popen.returncode} during the run:\n{cf.log_tail(3000)}")
        figures = _figures(series, (t1 - t0).total_seconds())
        if figures["kept_up"]:
            # cryptofeed has no drain: stop the feed, give its queues the drain budget, then read
            sim.stop()
            drain_start = time.monotonic()
            last, still = -1, 0
            while time.monotonic() - drain_start < cfg.drain_timeout and still < 5:
                n = stored()
                still = still + 1 if n == last else 0
                last = n
                time.sleep(1.0)
            drain_s = time.monotonic() - drain_start
            clock.stop()
            received_expr = "(receipt_timestamp AT TIME ZONE 'UTC')"
            where = f"{received_expr} >= %s AND {received_expr} < %s"
            latency = latency_percentiles(conn, clock, table, where, (t0, t1), received_expr=received_expr)
            with conn.cursor() as cur:
                cur.execute(f"SELECT count(*) FROM {table} WHERE {where}", (t0, t1))
                rows_in_window = cur.fetchone()[0]
                cur.execute(f"SELECT exchange, count(*) FROM {table} WHERE {where} GROUP BY 1 ORDER BY 1", (t0, t1))
                per_exchange = dict(cur.fetchall())
    finally:
        if clock is not None and clock._thread is not None and clock._thread.is_alive():  # noqa: SLF001
            clock.stop()
        for p in reversed(procs):
            p.stop()
        for close in closers:
            close()
        if not cfg.keep_topics:
            delete_topics([topic], wait_gone=15.0)
            with conn.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS {table}")
        conn.close()

    pg_rate = figures["stored_ticks_per_s"]
    processes = []
    for p in procs:
        cpu = p.cpu_percent()
        processes.append({"process": p.name, "role": "simulator" if p is sim else "pipeline", "pid": p.pid,
                          "cpu_percent": cpu, "cpu_us_per_stored_tick": cpu_us_per_tick(cpu, pg_rate),
                          **rss_trend(p.rss_samples)})
    for row in infra.rows():
        processes.append({**row, "role": "shared", "cpu_us_per_stored_tick": cpu_us_per_tick(row["cpu_percent"], pg_rate)})
    return {
        "system": f"cryptofeed {CRYPTOFEED_VERSION}",
        "label": cfg.label,
        "run_id": run_id,
        "target_ticks_per_s": cfg.ticks_per_s,
        "feed": feed.as_dict(),
        "window": {"start": t0.isoformat(), "end": t1.isoformat(), "seconds": (t1 - t0).total_seconds()},
        **figures,
        "rows_in_window_postgres": rows_in_window,
        "rows_in_window_by_exchange": per_exchange,
        "settle_seconds": settle_s, "settled": settled,
        "drain_seconds": drain_s,
        "latency": latency,
        "cpu_us_per_stored_tick": cpu_totals(processes),
        "processes": processes,
        "logs": str(logs),
        "series": {"t": [round(x - series["t"][0], 2) for x in series["t"]],
                   **{k: v for k, v in series.items() if k != "t"}},
    }


def _figures(series: dict, window: float) -> dict:
    t = series["t"]
    span = t[-1] - t[0] if len(t) >= 2 else 0.0

    def rate(key: str) -> float:
        return (series[key][-1] - series[key][0]) / span if span else 0.0

    # received is read from a file the launcher rewrites every 0.2 s: each backlog point is +-0.2 s of flow
    backlog = list(zip(t, [r - s for r, s in zip(series["received"], series["stored"])]))
    kafka_backlog = list(zip(t, [r - k for r, k in zip(series["received"], series["kafka"])]))
    pg_rate, kafka_rate, offered = rate("stored"), rate("kafka"), rate("received")
    lag = {"postgres": {**lag_verdict(backlog, offered), "measure": "backlog: ticks received - rows stored"},
           "kafka": {**lag_verdict(kafka_backlog, offered), "measure": "backlog: ticks received - records in its topic"}}
    # judged on Postgres, the sink the headline counts; its Kafka sink is reported beside it
    kept_up = not lag["postgres"]["grows"] and pg_rate > 0
    if not kept_up:
        verdict = "not sustained: its Postgres backlog grew"
    elif window < MIN_SUSTAINED_WINDOW_S:
        verdict = f"kept up over {window:.0f} s (a sustained figure needs a window of {MIN_SUSTAINED_WINDOW_S:.0f} s)"
    else:
        verdict = "sustained (Postgres)" + ("" if not lag["kafka"]["grows"] else "; its Kafka backlog grew")
    return {"offered_ticks_per_s": offered, "stored_ticks_per_s": pg_rate, "kafka_records_per_s": kafka_rate,
            # both of its sinks have to keep up for the whole to be sustained
            "stored_both_sinks_ticks_per_s": min(pg_rate, kafka_rate),
            "lag": lag, "kept_up": kept_up, "sustained": kept_up and window >= MIN_SUSTAINED_WINDOW_S,
            "verdict": verdict}


def peer_python_exists() -> bool:
    return (venv_dir() / "bin" / "python").exists() and os.access(venv_dir() / "bin" / "python", os.X_OK)
