"""`cryptopipe stack up [--source live|sim] [--core] [--no-airflow] | down | clean | status [--json]`."""
from __future__ import annotations

import argparse
import json
import sys

from cryptopipe.stack.progress import StepFailed
from cryptopipe.stack.scale import WORKER_KEYS


def print_status(st: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"source: [bold]{st['source']}[/bold]   supervisord: "
                  f"{'running' if st['supervisord']['running'] else 'stopped'} ({st['supervisord']['socket']})")
    table = Table("component", "state", "healthy", "address", "how to use", "auth")
    for name, c in st["components"].items():
        table.add_row(name, c["state"], "yes" if c["healthy"] else "no", c.get("address", ""), c.get("use", ""),
                      c.get("auth", ""))
    console.print(table)
    progs = Table("program", "state", "pid", "uptime")
    for name, p in st["programs"].items():
        progs.add_row(name, p["state"], str(p["pid"] or ""), f"{p['uptime_s']}s")
    console.print(progs)
    console.print(f"overall: {'[green]healthy[/green]' if st['healthy'] else '[red]NOT healthy[/red]'}")
    console.print(f"settings and secrets: {st['env_file']}   logs: {st['logs']}")


def scale_env(args) -> dict[str, str]:
    """KAFKA_BROKERS, KAFKA_HOSTS, *_WORKERS for `up`: a flag, else the environment, else 1 (each
    `up` says how many, as it says the source: a stack does not stay a cluster by omission)."""
    import os

    from cryptopipe.stack.scale import BROKERS_KEY, HOSTS_KEY, settings_from

    given = {BROKERS_KEY: args.brokers, **{k: getattr(args, k) for k in WORKER_KEYS.values()}}
    values = {k: (str(v) if v is not None else os.environ.get(k) or "1") for k, v in given.items()}
    values[HOSTS_KEY] = os.environ.get(HOSTS_KEY) or "loopback"
    return settings_from(values)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cryptopipe stack")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="install and start the local stack")
    up.add_argument("--source", choices=("live", "sim"), default="live")
    up.add_argument("--core", action="store_true", help="only Kafka, Postgres and S3")
    up.add_argument("--no-airflow", action="store_true")
    up.add_argument("--no-pipeline", action="store_true", help="do not start the streaming daemons")
    up.add_argument("--brokers", type=int, default=None,
                    help="Kafka nodes: 1 (default) or 3 (RF 3, min ISR 2); default $KAFKA_BROKERS or 1")
    for program, key in WORKER_KEYS.items():
        up.add_argument(f"--{program}-workers", type=int, default=None, dest=key,
                        help=f"{program} processes (one consumer group); default ${key} or 1")
    sub.add_parser("down", help="stop everything, keep data")
    sub.add_parser("clean", help="stop everything and delete the stack's data")
    st = sub.add_parser("status")
    st.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from cryptopipe.stack import manager

    try:
        if args.cmd == "up":
            return manager.up(args.source, core_only=args.core, with_airflow=not args.no_airflow,
                              with_pipeline=not args.no_pipeline, env=scale_env(args))
        if args.cmd == "down":
            return manager.down()
        if args.cmd == "clean":
            return manager.clean()
        st_ = manager.status()
        if args.json:
            json.dump(st_, sys.stdout, indent=2, sort_keys=True)
            print()
        else:
            print_status(st_)
        return 0 if st_["healthy"] else 3
    except StepFailed as exc:
        return manager.fail(exc)
