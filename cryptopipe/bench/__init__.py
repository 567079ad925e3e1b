"""`cryptopipe bench`: end-to-end benchmark of the pipeline on the real local stack, with
cryptofeed (from PyPI, in its own venv) side by side on the same machine and the same feed.

    cryptopipe bench                                  # 30 s at the default rate, ours only
    cryptopipe bench --rate 10000 --duration 60 --peer cryptofeed --json out.json
    cryptopipe bench --rate max                       # step the rate up until the pipeline stops keeping up
    cryptopipe bench --soak                           # one hour, RSS sampled every 10 s
    cryptopipe bench --profile DIR                    # transformer, loader and extractors under cProfile

Both systems are driven by the project's simulator (a private instance per run), write to the
same Kafka and Postgres (their own topics and tables), and are measured the same way: rows
committed per second, receipt -> commit latency from the rows' transaction ids sampled against
pg_current_snapshot(), consumer lag or in-memory backlog, CPU and RSS per process.
"""
from __future__ import annotations

import argparse
import shlex
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

MAX_RATE_STEPS = (2500.0, 5000.0, 7500.0, 10000.0, 15000.0, 20000.0, 30000.0, 40000.0, 60000.0, 80000.0, 100000.0)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cryptopipe bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--duration", type=float, default=None,
                   help="measured window, seconds (default 30; 3600 with --soak)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds after the first stored row (default 5)")
    p.add_argument("--rate", default="5000",
                   help="simulator trades/s per exchange (KuCoin sends one ticker per trade, Binance one "
                        "miniTicker per changed symbol per second), or 'max' (default 5000)")
    p.add_argument("--symbols", type=int, default=500, help="simulator symbols per exchange (default 500)")
    p.add_argument("--exchanges", default="binance,kucoin", help="comma-separated (default binance,kucoin)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--batch-size", type=int, default=5000, help="transformer/loader/archiver batch size")
    p.add_argument("--poll-timeout", type=float, default=0.5,
                   help="transformer/loader/archiver --poll-timeout: how long a batch may wait to fill (default 0.5)")
    p.add_argument("--linger-ms", type=int, default=5, help="extractors' producer linger (default 5)")
    p.add_argument("--archive-max-age", type=float, default=None,
                   help="archiver --max-age: seconds an S3 object may stay open (default: the archiver's 60)")
    p.add_argument("--no-archive", action="store_true", help="do not run the S3 archiver alongside")
    p.add_argument("--peer", choices=["none", "cryptofeed"], default="none",
                   help="also run the peer on the same feed and report the ratio")
    p.add_argument("--peer-only", action="store_true", help="run only the peer (with --peer)")
    p.add_argument("--soak", action="store_true",
                   help="one-hour run (unless --duration is given) sampling RSS every 10 s")
    p.add_argument("--profile", metavar="DIR",
                   help="run transformer, loader and extractors under cProfile, stats in DIR")
    p.add_argument("--json", metavar="PATH", help="write every figure and series as JSON")
    p.add_argument("--work-dir", default=None, help="logs of the child processes (default: a temp dir)")
    p.add_argument("--keep-topics", action="store_true", help="do not delete the run's Kafka topics")
    return p


def _config(args, rate: float):
    import tempfile

    from cryptopipe.bench.ours import RunConfig

    exchanges = tuple(e.strip() for e in args.exchanges.split(",") if e.strip())
    from common.exchanges import EXCHANGES

    bad = [e for e in exchanges if e not in EXCHANGES]
    if bad or not exchanges:
        raise SystemExit(f"cryptopipe bench: unknown exchange(s) {bad or exchanges}")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="cryptopipe-bench-"))
    duration = args.duration if args.duration is not None else (3600.0 if args.soak else 30.0)
    sample_interval = 10.0 if args.soak else 1.0
    clock_interval = 0.1 if args.soak else 0.02
    return RunConfig(commit_clock_interval=clock_interval, duration=duration, warmup=args.warmup, rate=rate, symbols=args.symbols, exchanges=exchanges,
                     seed=args.seed, sample_interval=sample_interval, batch_size=args.batch_size,
                     poll_timeout=args.poll_timeout, linger_ms=args.linger_ms,
                     profile_dir=Path(args.profile) if args.profile else None, work_dir=work,
                     keep_topics=args.keep_topics, archive=not args.no_archive,
                     archive_max_age=args.archive_max_age)


def _run_max(args, settings, console, run_fn, label: str) -> tuple[dict, list[dict]]:
    """Step the rate up; the best step is the highest sustained rate that kept up with its feed
    (rows into Postgres >= 95% of offered, lag bounded). Stops at the first step that does not keep
    up. Both systems are judged on Postgres, the sink the headline figure counts; the peer's Kafka
    sink is reported beside it."""
    steps, best, result = [], None, None
    for rate in MAX_RATE_STEPS:
        cfg = _config(args, rate)
        result = run_fn(cfg, settings, log=lambda m: console.print(m, style="dim"))
        keeping_up = result["lag_bounded"] and result["sustained_ticks_per_s"] >= 0.95 * result["offered_ticks_per_s"]
        steps.append({"rate": rate, "offered": result["offered_ticks_per_s"],
                      "sustained": result["sustained_ticks_per_s"], "lag_bounded": result["lag_bounded"],
                      "kept_up": keeping_up})
        console.print(f"{label} step rate={rate:,.0f}: offered {result['offered_ticks_per_s']:,.0f}/s, "
                      f"sustained {result['sustained_ticks_per_s']:,.0f}/s, "
                      f"{'kept up' if keeping_up else 'did NOT keep up'}")
        if keeping_up and (best is None or result["sustained_ticks_per_s"] > best["sustained_ticks_per_s"]):
            best = result
        if not keeping_up:
            break
        # the feed (simulator + extractors) stopped delivering more: more rate measures nothing new
        offered = [st["offered"] for st in steps]
        if len(offered) >= 3 and max(offered[-2:]) < 1.05 * max(offered[:-2]):
            steps[-1]["stopped"] = "feed-bound: offered ticks/s stopped growing for two steps"
            console.print(f"{label}: the feed stopped growing; stopping the ramp")
            break
    chosen = best or result
    chosen["max_steps"] = steps
    return chosen, steps


def _terminate(signum, _frame):
    # SIGTERM unwinds like Ctrl-C, so every child process and topic of the run is cleaned up
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)
    console = Console()
    started = datetime.now(timezone.utc)
    command = "cryptopipe bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    from cryptopipe.bench.ours import env_summary, run_ours
    from cryptopipe.stack.manager import ensure_core

    console.print("bench: making sure Kafka, Postgres and S3 are up", style="dim")
    settings = ensure_core()
    doc: dict = {"command": command, "date": started.strftime("%Y-%m-%d %H:%M UTC"),
                 "environment": env_summary(), "ours": None, "peer": None, "ratio": None}
    rate_arg = str(args.rate).strip().lower()
    if rate_arg != "max":
        try:
            rate = float(rate_arg)
        except ValueError:
            console.print(f"cryptopipe bench: --rate must be a number or 'max', not {args.rate!r}", style="red")
            return 2
    else:
        rate = None
    if not args.peer_only:
        if rate is None:
            doc["ours"], _ = _run_max(args, settings, console, run_ours, "cryptopipe")
        else:
            doc["ours"] = run_ours(_config(args, rate), settings, log=lambda m: console.print(m, style="dim"))
    if args.peer == "cryptofeed":
        from cryptopipe.bench.peer import PeerUnavailable, run_cryptofeed

        try:
            if rate is None:
                doc["peer"], _ = _run_max(args, settings, console, run_cryptofeed, "cryptofeed")
            else:
                doc["peer"] = run_cryptofeed(_config(args, rate), settings, log=lambda m: console.print(m, style="dim"))
        except PeerUnavailable as exc:
            doc["peer_error"] = str(exc)
        ours, peer = doc["ours"], doc["peer"]
        if ours and peer and peer["sustained_ticks_per_s"]:
            doc["ratio"] = ours["sustained_ticks_per_s"] / peer["sustained_ticks_per_s"]
        if ours and peer and peer.get("sustained_both_sinks_ticks_per_s"):
            doc["ratio_both_sinks"] = ours["sustained_ticks_per_s"] / peer["sustained_both_sinks_ticks_per_s"]
    doc["environment_after"] = {"loadavg_1_5_15": env_summary()["loadavg_1_5_15"]}
    render_doc = dict(doc)
    from cryptopipe.bench.report import render, write_json

    render(render_doc, console)
    if args.json:
        write_json(doc, args.json)
        console.print(f"figures written to {args.json}", style="dim")
    return 0
