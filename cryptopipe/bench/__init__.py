"""`cryptopipe bench`: the pipeline on the real local stack, fed by the project's simulator, with
cryptofeed (from PyPI, in its own venv) measured the same way in the same run.

    cryptopipe bench --rate max --duration 60 --peer cryptofeed --json F
        the maximum SUSTAINED ticks/s into Postgres with the shipped defaults (lag on every topic,
        the archiver's included, does not grow over the window), its latency, CPU per tick and
        RSS of every process; the same search with tuned flags; one step past capacity (RSS);
        cryptofeed at its own maximum; the limit lines (simulator, Kafka and Postgres alone) and
        the cost of the `ticks` primary key
    cryptopipe bench --rate 10000 --duration 60 --json F      one fixed-rate step
    cryptopipe bench --rate 10000 --profile DIR               every daemon under cProfile
    cryptopipe bench --soak --rate 1000                       one hour, RSS sampled every 10 s
    KAFKA_BROKERS=3 make up SOURCE=sim, then
    cryptopipe bench --rate max --tuned "--replication 3"     RF 1 vs RF 3 on three brokers
    cryptopipe bench --rate max --tuned "--transform-workers 2 --load-workers 2 --archive-workers 2"
                                                              one process of each consumer vs two

--rate is offered ticks/s over both exchanges: the simulator's symbols and trade rate are derived
from it (cryptopipe/bench/feed.py). Daemon flags (--batch-size, --poll-timeout, --linger-ms,
--batch-linger-ms, --archive-max-age, --*-workers, --replication) change the run from the
shipped defaults; --tuned FLAGS measures the same search again with FLAGS, in the same run.
"""
from __future__ import annotations

import argparse
import shlex
import signal
import sys
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

# the tuned figures' flags (the shipped defaults are the daemons' own); see docs/benchmarks.md
DEFAULT_TUNED = "--poll-timeout 0.05 --batch-linger-ms 50"
RAMP_START = 5000.0
PAST_CAPACITY_FACTOR = 2.0


def _daemon_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=None, help="transform/load/archive --batch-size (records)")
    p.add_argument("--poll-timeout", type=float, default=None, help="transform/load/archive --poll-timeout (s)")
    p.add_argument("--linger-ms", type=int, default=None, help="extractors' producer --linger-ms")
    p.add_argument("--batch-linger-ms", type=float, default=None, help="KuCoin extractor's --batch-linger-ms")
    p.add_argument("--archive-max-age", type=float, default=None, help="archiver --max-age (s)")
    for d in ("transform", "load", "archive"):
        p.add_argument(f"--{d}-workers", type=int, default=1, help=f"{d} instances in one consumer group (default 1)")
    p.add_argument("--replication", type=int, default=1, choices=(1, 3),
                   help="replicas of the run's topics (3: min.insync.replicas=2; needs a KAFKA_BROKERS=3 stack)")


def tuning_of(args):
    from cryptopipe.bench.ours import Tuning

    return Tuning(batch_size=args.batch_size, poll_timeout=args.poll_timeout, linger_ms=args.linger_ms,
                  batch_linger_ms=args.batch_linger_ms, archive_max_age=args.archive_max_age,
                  transform_workers=args.transform_workers, load_workers=args.load_workers,
                  archive_workers=args.archive_workers, replication=args.replication)


def parse_tuning(flags: str):
    p = argparse.ArgumentParser(prog="--tuned", add_help=False, exit_on_error=False)
    _daemon_flags(p)
    try:
        return tuning_of(p.parse_args(shlex.split(flags)))
    except (argparse.ArgumentError, SystemExit) as exc:
        raise SystemExit(f"cryptopipe bench: --tuned {flags!r}: {exc}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cryptopipe bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--rate", default="5000",
                   help="offered ticks/s over both exchanges (default 5000: one step), or 'max' to search for the "
                        "maximum sustained rate (about 35 minutes with the peer, see docs/benchmarks.md)")
    p.add_argument("--duration", type=float, default=None,
                   help="measured window per step, s (default 60, the shortest window a sustained figure allows; "
                        "3600 with --soak)")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds after the first stored row (default 10)")
    p.add_argument("--symbols", type=int, default=None,
                   help="simulator symbols (default: one per ~3 ticks/s of --rate, see feed.py)")
    p.add_argument("--exchanges", default=None, help="comma-separated (default: every exchange of the registry)")
    p.add_argument("--seed", type=int, default=7)
    _daemon_flags(p)
    p.add_argument("--no-archive", action="store_true", help="do not run the S3 archiver (not a sustained figure)")
    p.add_argument("--tuned", default=None, metavar="FLAGS",
                   help=f"daemon flags of the tuned figures, or 'none' (default with --rate max: {DEFAULT_TUNED!r}; "
                        "with a fixed rate: none)")
    p.add_argument("--ramp", default=None, metavar="R1,R2,...",
                   help="--rate max: these steps (ticks/s) instead of x1.5 from --ramp-start, then bisection")
    p.add_argument("--ramp-start", type=float, default=RAMP_START, help=f"first step of --rate max (default {RAMP_START:g})")
    p.add_argument("--max-steps", type=int, default=12, help="--rate max: at most this many steps per search")
    p.add_argument("--no-past-capacity", action="store_true",
                   help=f"--rate max: skip the step at {PAST_CAPACITY_FACTOR:g}x the maximum (RSS past capacity)")
    p.add_argument("--limits", action=argparse.BooleanOptionalAction, default=None,
                   help="measure the limit lines and the primary key's cost (default: with --rate max)")
    p.add_argument("--limit-seconds", type=float, default=10.0, help="seconds per limit line (default 10)")
    p.add_argument("--limit-batch-ticks", type=int, default=10_000,
                   help="ticks per Postgres transaction in the Postgres limit line (default 10,000)")
    p.add_argument("--peer", choices=["none", "cryptofeed"], default="none",
                   help="also run the peer, at its own maximum with --rate max")
    p.add_argument("--peer-only", action="store_true", help="run only the peer (with --peer)")
    p.add_argument("--soak", action="store_true",
                   help="one-hour fixed-rate run (unless --duration is given) sampling RSS every 10 s")
    p.add_argument("--profile", metavar="DIR",
                   help="run every daemon under cProfile (with --rate max: one extra step at half the maximum, "
                        "as cProfile about doubles the daemons' cost)")
    p.add_argument("--json", metavar="PATH", help="write every figure and series as JSON")
    p.add_argument("--work-dir", default=None, help="logs of the child processes (default: a temp dir)")
    p.add_argument("--keep-topics", action="store_true", help="do not delete the steps' Kafka topics")
    return p


def _terminate(signum, _frame):
    # SIGTERM unwinds like Ctrl-C, so every child process, topic and the bench database are cleaned up
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    console = Console()
    started = datetime.now(timezone.utc)
    rate_arg = str(args.rate).strip().lower()
    if rate_arg == "max" and args.soak:
        console.print("cryptopipe bench: --soak needs a fixed --rate", style="red")
        return 2
    try:
        rate = None if rate_arg == "max" else float(rate_arg)
        ramp = [float(x) for x in args.ramp.split(",") if x.strip()] if args.ramp else None
    except ValueError:
        console.print(f"cryptopipe bench: --rate must be a number or 'max' (got {args.rate!r}), "
                      f"--ramp numbers (got {args.ramp!r})", style="red")
        return 2
    from common.exchanges import EXCHANGES

    exchanges = tuple(e.strip() for e in (args.exchanges or ",".join(EXCHANGES)).split(",") if e.strip())

    if not exchanges or any(e not in EXCHANGES for e in exchanges):
        console.print(f"cryptopipe bench: unknown exchange(s) in {args.exchanges!r}", style="red")
        return 2
    tuned_flags = args.tuned if args.tuned is not None else (DEFAULT_TUNED if rate is None else "none")
    tuned = None if tuned_flags.strip().lower() in ("", "none") else parse_tuning(tuned_flags)
    limits = args.limits if args.limits is not None else rate is None

    from cryptopipe.bench.database import bench_database
    from cryptopipe.bench.ours import RunConfig, env_summary
    from cryptopipe.bench.report import render, write_json
    from cryptopipe.bench.run import Plan, run_plan
    from common.settings import get_settings
    from cryptopipe.stack.manager import up

    console.print("bench: making sure Kafka, Postgres and S3 are up", style="dim")
    up(core_only=True)
    settings = get_settings()
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="cryptopipe-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    duration = args.duration if args.duration is not None else (3600.0 if args.soak else 60.0)
    doc: dict = {"command": "cryptopipe bench " + " ".join(shlex.quote(a) for a in argv),
                 "date": started.strftime("%Y-%m-%d %H:%M UTC"), "environment": env_summary()}
    run_id = uuid.uuid4().hex[:8]
    with bench_database(settings.postgres_dsn, run_id) as dsn:
        base = RunConfig(duration=duration, warmup=args.warmup, symbols=args.symbols, exchanges=exchanges,
                         seed=args.seed, sample_interval=10.0 if args.soak else 1.0,
                         commit_clock_interval=0.1 if args.soak else 0.02, tuning=tuning_of(args),
                         archive=not args.no_archive, work_dir=work, keep_topics=args.keep_topics, dsn=dsn,
                         capture=work / "captured-transformed.pkl" if limits else None)
        plan = Plan(rate=rate, ramp=ramp, ramp_start=args.ramp_start, tuned=tuned,
                    past_capacity=rate is None and not args.no_past_capacity,
                    peer=args.peer == "cryptofeed", peer_only=args.peer_only, limits=limits,
                    limit_seconds=args.limit_seconds, limit_batch_ticks=args.limit_batch_ticks,
                    profile_dir=Path(args.profile) if args.profile else None,
                    past_capacity_factor=PAST_CAPACITY_FACTOR, max_steps=args.max_steps)
        doc.update(run_plan(plan, base, settings, lambda m: console.print(m, style="dim")))
    doc["environment_after"] = {"loadavg_1_5_15": env_summary()["loadavg_1_5_15"]}
    render(doc, console)
    if args.json:
        write_json(doc, args.json)
        console.print(f"figures written to {args.json}", style="dim")
    return 0
