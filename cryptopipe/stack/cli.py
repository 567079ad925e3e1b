"""`cryptopipe stack up [--source live|sim] [--core] [--no-airflow] | down | clean | status [--json]`.
`stack up` passes the settings variables of its environment (common.settings.stack_variables) to
the stack, which remembers them in stack.env (README, "Configuration")."""
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
    cfg = st["configuration"]
    conf = Table("setting", "value")
    for var, url in cfg["endpoints"].items():
        conf.add_row(var, url)
    conf.add_row("SYMBOLS", ",".join(cfg["symbols"]) or "(every symbol the exchanges stream)")
    for var, value in cfg["remembered"].items():
        if var not in cfg["endpoints"] and var != "SYMBOLS":
            conf.add_row(var, value)
    console.print(conf)
    if cfg["environment_overrides"]:
        console.print(f"[yellow]your environment sets {', '.join(cfg['environment_overrides'])}: commands run "
                      "here use it; the stack's daemons do not until `make up` is given it[/yellow]")
    progs = Table("program", "state", "pid", "uptime")
    for name, p in st["programs"].items():
        progs.add_row(name, p["state"], str(p["pid"] or ""), f"{p['uptime_s']}s")
    console.print(progs)
    console.print(f"overall: {'[green]healthy[/green]' if st['healthy'] else '[red]NOT healthy[/red]'}")
    console.print(f"settings and secrets: {st['env_file']}   logs: {st['logs']}")


def settings_from_caller() -> dict[str, str]:
    """The settings variables this command's environment gives (remembered in stack.env). The
    variables of what the stack owns (its addresses and logins) are dropped from this process's
    environment too, so that its own steps (topics, bucket, migrations) reach the stack it runs."""
    import os

    from cryptopipe.stack import config

    owned = config.owned_in_environment(os.environ)
    if owned:
        print(f"cryptopipe stack: ignoring {', '.join(owned)} from the environment: the stack sets "
              "its own (README, Configuration)", file=sys.stderr)
        for key in owned:
            del os.environ[key]
    return config.from_environment(os.environ)


def scale_flags(args) -> dict[str, str]:
    """`--brokers N`, `--transform-workers N`, ...: the flags given (they win over the environment
    and are remembered like it)."""
    from cryptopipe.stack.scale import BROKERS_KEY

    given = {BROKERS_KEY: args.brokers, **{k: getattr(args, k) for k in WORKER_KEYS.values()}}
    return {k: str(v) for k, v in given.items() if v is not None}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cryptopipe stack")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="install and start the local stack")
    up.add_argument("--source", choices=("live", "sim"), default=None,
                    help="exchange endpoints: the live exchanges or the bundled simulator (default: the "
                         "stack's remembered source; live at the first up)")
    up.add_argument("--core", action="store_true", help="only Kafka, Postgres and S3")
    up.add_argument("--no-airflow", action="store_true")
    up.add_argument("--no-pipeline", action="store_true", help="do not start the streaming daemons")
    up.add_argument("--brokers", type=int, default=None,
                    help="Kafka nodes: 1 or 3 (RF 3, min ISR 2); default $KAFKA_BROKERS, else the remembered count, else 1")
    for program, key in WORKER_KEYS.items():
        up.add_argument(f"--{program}-workers", type=int, default=None, dest=key,
                        help=f"{program} processes (one consumer group); default ${key}, else the remembered count, else 1")
    sub.add_parser("down", help="stop everything, keep data")
    sub.add_parser("clean", help="stop everything and delete the stack's data")
    st = sub.add_parser("status")
    st.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from cryptopipe.stack import manager

    try:
        if args.cmd == "up":
            return manager.up(args.source, core_only=args.core, with_airflow=not args.no_airflow,
                              with_pipeline=not args.no_pipeline,
                              env={**settings_from_caller(), **scale_flags(args)})
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
