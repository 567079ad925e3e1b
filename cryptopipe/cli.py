"""`cryptopipe <command> ...` — dispatches to the component that owns the command.

Each component exposes `main(argv: list[str]) -> int`; imports are lazy so `cryptopipe sim`
does not pay for Airflow and `cryptopipe stack status` does not pay for ccxt.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str, str]] = {
    # name: (module, function, help)
    "stack": ("cryptopipe.stack.cli", "main", "local stack: up | down | clean | status [--json]"),
    "extract": ("streaming.extractor.cli", "main", "stream an exchange into its raw topic: extract binance|kucoin"),
    "transform": ("streaming.transformer", "main", "raw topics -> normalized ticks (+ DLQ)"),
    "load": ("streaming.loader", "main", "normalized ticks and pipeline events -> Postgres"),
    "archive": ("streaming.archiver", "main", "raw topics -> S3 (gzip JSONL)"),
    "backfill": ("backfill.cli", "backfill_main", "fill 1-minute candles from the exchanges' REST APIs"),
    "gaps": ("backfill.cli", "gaps_main", "detect and list gaps in the stored history"),
    "reconcile": ("backfill.cli", "reconcile_main", "replace closed minutes' stream candles by the exchange's; --status"),
    "serve": ("streaming.api.server", "main", "the prices server: REST, websocket and page on 127.0.0.1:8000"),
    "cross-check": ("backfill.cross_check", "main", "compare the exchanges' closes; record divergences"),
    "sim": ("sim.cli", "main", "run the Binance/KuCoin exchange simulator on loopback"),
    "bench": ("cryptopipe.bench", "main", "end-to-end benchmark on the real stack"),
    "bench-api": ("cryptopipe.bench.api", "main", "websocket fan-out benchmark of the prices server"),
    "peek": ("cryptopipe.peek", "main", "look at the data: peek topic NAME | peek s3 [PREFIX] | peek sql"),
}


def usage() -> str:
    lines = ["usage: cryptopipe <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"cryptopipe: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = COMMANDS[name]
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
