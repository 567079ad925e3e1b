"""`cryptopipe bench-api`: the prices server's websocket fan-out under issue 17's load.

    cryptopipe bench-api --rate 2000 --symbols 200 --clients 500 --duration 60 --json out.json

A private simulator feeds the real extractors, transformer and loader (the run's own topics,
suffix `_benchapi<id>`; the loader writes the stack's tables), and a `cryptopipe serve` reads them; one client process opens `--clients`
websockets: 10 % on every symbol, the rest on ten symbols each, and `--slow` of all of them
reading one frame a second (they reconnect when the server drops them). Reported: p50/p95/p99
of tick -> client (client receipt - the tick's exchange time, KuCoin ticks, whose simulator sends
them at most 100 ms after that time; the simulator's own send delay from its ground truth beside
it), ticks delivered per second, the server's CPU and RSS (sampled every second) and its
conflation and disconnect counters.
"""
from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path

from rich.console import Console

from common.exchanges import EXCHANGES, plug

# tick -> client latency is timed on the exchange that pushes soonest after a trade (KuCoin, at
# most 100 ms): its ticks' delay is the pipeline's and the server's, not the exchange's batching
LATENCY_EXCHANGE = min(EXCHANGES, key=lambda e: plug(e).PUSH_INTERVAL_MS)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cryptopipe bench-api", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--rate", type=float, default=2000.0, help="simulator trades/s per exchange (default 2000)")
    p.add_argument("--symbols", type=int, default=200, help="simulator symbols (default 200)")
    p.add_argument("--clients", type=int, default=500, help="websocket clients (default 500)")
    p.add_argument("--all-share", type=float, default=0.1, help="share of clients on every symbol (default 0.1)")
    p.add_argument("--slow", type=float, default=0.1, help="share of clients reading slowly (default 0.1)")
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds (default 60)")
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--work-dir", default=None)
    return p


def client_spec(symbols: list[str], n: int, all_share: float, slow_share: float, seconds: float) -> dict:
    n_all = round(n * all_share)
    every = max(1, round(1 / slow_share)) if slow_share > 0 else 0
    clients = []
    for i in range(n):
        if i < n_all:
            query = "/v1/stream"
        else:
            j = (i - n_all) * 10
            query = "/v1/stream?symbols=" + ",".join(symbols[(j + k) % len(symbols)] for k in range(10))
        clients.append({"query": query, "slow": bool(every) and i % every == every - 1})
    return {"clients": clients, "seconds": seconds, "slow_read_interval_s": 1.0}


def run(args) -> dict:
    import tempfile

    from common.kafka import create_topics, delete_topics
    from common.settings import get_settings
    from cryptopipe.bench.measure import metric_sum, scrape
    from cryptopipe.bench.ours import env_summary, exchange_env
    from cryptopipe.bench.procs import Proc, SimProc, free_port, python

    from cryptopipe.stack.kafka_auth import LOAD_GROUP, TRANSFORM_GROUP, client_env
    from cryptopipe.stack.manager import up

    up(core_only=True)      # Kafka, Postgres and S3 of the local stack (started if needed)
    settings = get_settings()
    run_id = uuid.uuid4().hex[:8]
    suffix = f"_benchapi{run_id}"
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="cryptopipe-bench-api-"))
    topics = {f"{e}_{kind}{suffix}": (settings.topic_partitions if kind != "dlq" else 1)
              for e in EXCHANGES for kind in ("raw_data", "transformed_data", "dlq")}
    topics[f"pipeline_events{suffix}"] = 1
    create_topics(topics)
    procs: list[Proc] = []
    console = Console(stderr=True)
    try:
        sim = SimProc("sim", [python(), "-m", "sim", "--port", "0", "--rate", str(args.rate), "--symbols",
                              str(args.symbols), "--seed", str(args.seed), "--truth-max", "2000000",
                              "--log-level", "WARNING"], work / "sim.log").start()
        procs.append(sim)
        env = exchange_env(sim.urls)
        api_port = free_port()
        # each process as its own Kafka identity; groups named after the daemons' own (their ACLs)
        procs.append(Proc("transform", [python(), "-m", "cryptopipe", "transform", "--topic-suffix", suffix, "--group",
                                        f"{TRANSFORM_GROUP}-benchapi-{run_id}", "--instance", run_id,
                                        "--metrics-port", str(free_port()),
                                        "--poll-timeout", "0.02", "--batch-size", "500", "--log-level", "WARNING"],
                          work / "transform.log", env={**env, **client_env("transform")}).start())
        # the loader fills latest_prices, which the server checks subscriptions against
        procs.append(Proc("load", [python(), "-m", "cryptopipe", "load", "--topic-suffix", suffix, "--group",
                                   f"{LOAD_GROUP}-benchapi-{run_id}", "--metrics-port", str(free_port()),
                                   "--retention-days", "0", "--log-level", "WARNING"], work / "load.log",
                          env={**env, **client_env("load")}).start())
        api = Proc("api", [python(), "-m", "cryptopipe", "serve", "--port", str(api_port), "--topic-suffix", suffix,
                           "--log-level", "WARNING"], work / "api.log",
                   env={**env, **client_env("api"), "API_MAX_CONNECTIONS": str(args.clients + 100)}).start()
        procs.append(api)
        for ex in EXCHANGES:
            procs.append(Proc(f"extract-{ex}", [python(), "-m", "cryptopipe", "extract", ex, "--topic-suffix", suffix,
                                                "--metrics-port", str(free_port()), "--spool-dir", str(work / f"spool-{ex}"),
                                                "--label", f"benchapi{run_id}", "--log-level", "WARNING"],
                              work / f"extract-{ex}.log", env={**env, **client_env(f"extract-{ex}")}).start())
        deadline = time.monotonic() + 90
        while not scrape(api_port) or metric_sum(scrape(api_port), "cryptopipe_api_tail_records_total") == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("no ticks reached the prices server:\n" + "\n".join(p.log_tail(800) for p in procs))
            time.sleep(0.5)
        console.print(f"bench-api: ticks flowing; warming up {args.warmup:.0f}s")
        time.sleep(args.warmup)

        from common.db import connect
        from sim.control import SimControl

        listed = {s["symbol"] for ex in EXCHANGES
                  for s in SimControl(sim.urls["SIM_CONTROL_URL"]).symbols(ex) if s.get("status") == "TRADING"}
        conn = connect()
        try:
            with conn, conn.cursor() as cur:     # subscribe to symbols the server knows (they have a price)
                cur.execute("SELECT DISTINCT symbol FROM latest_prices WHERE symbol = ANY(%s)", (sorted(listed),))
                symbols = sorted(r[0] for r in cur.fetchall())
        finally:
            conn.close()
        spec = {**client_spec(symbols, args.clients, args.all_share, args.slow, args.duration),
                "latency_exchange": LATENCY_EXCHANGE}
        (work / "spec.json").write_text(json.dumps(spec))
        clients = Proc("clients", [python(), "-m", "cryptopipe.bench.ws_clients", f"ws://127.0.0.1:{api_port}",
                                   str(work / "spec.json"), str(work / "clients.json")], work / "clients.log").start()
        procs.append(clients)
        before = scrape(api_port)
        t0_ms = int(time.time() * 1000)
        for p in procs:
            p.mark_start()
        start = time.monotonic()
        rss = []
        while clients.alive() and time.monotonic() - start < args.duration + 120:
            now = time.monotonic() - start
            for p in procs:
                p.sample(now)
            rss.append((round(now, 1), round(api.ps.memory_info().rss / 2**20, 1)))
            time.sleep(1.0)
        for p in procs:
            p.mark_end()
        t1_ms = int(time.time() * 1000)
        after = scrape(api_port)
        result_clients = json.loads((work / "clients.json").read_text())
        truth = SimControl(sim.urls["SIM_CONTROL_URL"]).truth(exchange=LATENCY_EXCHANGE, since_ms=t0_ms, until_ms=t1_ms,
                                                              by="sent")
        delays = sorted(int(r["sent_ms"]) - int(r["event_ms"]) for r in truth)

        def pct(q):
            return delays[min(len(delays) - 1, int(len(delays) * q))] if delays else None

        def delta(name, **labels):
            return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)

        window = (t1_ms - t0_ms) / 1000

        def hist_pct(name):
            """p50/p99 (bucket upper bounds, ms) of a server histogram over the window."""
            counts = {}
            for (n, pairs), v in after.items():
                if n == name + "_bucket":
                    le = dict(pairs)["le"]
                    counts[le] = v - before.get((n, pairs), 0.0)
            ranked = sorted(((float(le), c) for le, c in counts.items()), key=lambda x: x[0])
            total = ranked[-1][1] if ranked else 0
            out = {"n": int(total)}
            for q, key in ((0.5, "p50_ms_at_most"), (0.99, "p99_ms_at_most")):
                out[key] = next((le * 1000 for le, c in ranked if total and c >= q * total), None)
            return out

        return {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "env": env_summary(),
            "settings": {"rate_per_exchange": args.rate, "symbols": args.symbols, "clients": args.clients,
                         "all_share": args.all_share, "slow_share": args.slow, "seconds": args.duration},
            "window_s": window,
            "tick_to_client_kucoin_ms": result_clients["latency_kucoin"],
            "sim_send_delay_kucoin_ms": {"p50": pct(0.5), "p99": pct(0.99), "n": len(delays)},
            "event_to_server_tail": hist_pct("cryptopipe_api_tail_lag_seconds"),
            "server_wait_per_frame": hist_pct("cryptopipe_api_ws_server_wait_seconds"),
            # the tail observes each tick it decodes once in its lag histogram
            "ticks_into_server_per_s": delta("cryptopipe_api_tail_lag_seconds_count") / window,
            "records_into_server_per_s": delta("cryptopipe_api_tail_records_total") / window,
            "ticks_sent_per_s": delta("cryptopipe_api_ws_ticks_sent_total") / window,
            "frames_sent_per_s": delta("cryptopipe_api_ws_frames_sent_total") / window,
            "ticks_conflated": delta("cryptopipe_api_ws_ticks_conflated_total"),
            "disconnects": {r: delta("cryptopipe_api_ws_disconnects_total", reason=r)
                            for r in ("slow", "client_closed", "error")},
            "client_side": {k: result_clients[k] for k in ("ticks", "frames", "closes", "connects", "refused")},
            "server": {"cpu_percent": api.cpu_percent(), "peak_rss_mb": api.peak_rss / 2**20, "rss_mb_series": rss},
            "processes": [{"process": p.name, "cpu_percent": p.cpu_percent(), "peak_rss_mb": p.peak_rss / 2**20}
                          for p in procs],
            "logs": str(work),
        }
    finally:
        for p in reversed(procs):
            p.stop()
        delete_topics(topics, wait_gone=15.0)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if not 1 <= args.clients <= 5000 or not 0 <= args.slow <= 1 or not 0 <= args.all_share <= 1:
        parser().error("--clients in [1, 5000], --slow and --all-share in [0, 1]")
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    lat = result["tick_to_client_kucoin_ms"]
    console = Console()
    console.print(f"tick -> client (KuCoin ticks, ms): every-symbol clients {lat.get('all')}, "
                  f"ten-symbol clients {lat.get('ten')}")
    console.print(f"simulator's own send delay (ms): {result['sim_send_delay_kucoin_ms']}")
    console.print(f"exchange time -> server's Kafka tail: {result['event_to_server_tail']}; "
                  f"oldest tick's wait in the server per frame: {result['server_wait_per_frame']}")
    console.print(f"ticks into the server {result['ticks_into_server_per_s']:.0f}/s "
                  f"(in {result['records_into_server_per_s']:.0f} ticks.v1 records/s), sent to clients "
                  f"{result['ticks_sent_per_s']:.0f}/s in {result['frames_sent_per_s']:.0f} frames/s; "
                  f"conflated {result['ticks_conflated']:.0f}; disconnects {result['disconnects']}")
    s = result["server"]
    rss = [v for _, v in s["rss_mb_series"]]
    console.print(f"server CPU {s['cpu_percent'] or 0:.0f}% of a core, RSS first/peak/last "
                  f"{rss[0] if rss else 0:.0f}/{s['peak_rss_mb']:.0f}/{rss[-1] if rss else 0:.0f} MB")
    return 0
