"""`cryptopipe sim` / `python -m sim`: run the exchange simulator on 127.0.0.1.

Prints, once bound, one NAME=value line each (then nothing else on stdout; logs go to stderr):
  BINANCE_WS_URL=ws://127.0.0.1:<port>/binance-ws
  BINANCE_REST_URL=http://127.0.0.1:<port>/binance
  KUCOIN_REST_URL=http://127.0.0.1:<port>/kucoin
  SIM_CONTROL_URL=http://127.0.0.1:<port>/_sim
  SIM_PORT=<port>
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from sim.app import Config, serve


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cryptopipe sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8765, help="0 = a free port (default 8765)")
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (default loopback; 0.0.0.0 only inside a container, see docker-compose.yaml)")
    p.add_argument("--symbols", type=int, default=200, help="symbols per exchange (default 200)")
    p.add_argument("--rate", type=float, default=200.0, help="trades/s over all symbols, per exchange (default 200)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-lifetime", type=float, default=86_400.0, help="Binance connection lifetime, s")
    p.add_argument("--binance-ping-interval", type=float, default=20.0)
    p.add_argument("--binance-pong-timeout", type=float, default=60.0)
    p.add_argument("--kucoin-ping-interval", type=float, default=18.0, help="seconds (bullet says ms)")
    p.add_argument("--kucoin-ping-timeout", type=float, default=10.0, help="seconds (bullet says ms)")
    p.add_argument("--weight-limit", type=int, default=6000, help="Binance REST weight per minute")
    p.add_argument("--ban-seconds", type=float, default=120.0, help="Binance 418 ban length")
    p.add_argument("--kucoin-pool", type=int, default=2000, help="KuCoin public requests per 30 s")
    p.add_argument("--truth-max", type=int, default=300_000,
                   help="ground-truth ring size in ticks (0 = off; ~0.6 kB each)")
    p.add_argument("--truth-dir", default=None, help="also append the ground truth to JSONL files here")
    p.add_argument("--truth-keep-hours", type=float, default=24.0,
                   help="delete hourly truth files older than this (0 = keep all)")
    p.add_argument("--step", type=float, default=0.05, help="engine step, s")
    p.add_argument("--max-lag", type=float, default=2.0,
                   help="an engine this many s behind drops its backlog unsent (0 = never; it then sends late)")
    p.add_argument("--log-level", default="WARNING")
    g = p.add_argument_group("faults at start")
    g.add_argument("--outage", type=float, default=0, help="refuse websocket connections for N s")
    g.add_argument("--stall", type=float, default=0, help="stall websockets for N s")
    g.add_argument("--malformed-ratio", type=float, default=0, help="corrupt this share of data frames")
    g.add_argument("--truncated-ratio", type=float, default=0, help="truncate this share of data frames")
    g.add_argument("--duplicate-ratio", type=float, default=0, help="send this share of data frames twice")
    g.add_argument("--rest-429", type=float, default=0, help="answer all REST with 429 for N s")
    g.add_argument("--slow-rest", type=float, default=0, help="delay every REST answer by N s")
    g.add_argument("--drift", action="append", default=[], metavar="EXCHANGE:SYMBOL:BPS[:SECONDS]",
                   help="move one exchange's price of SYMBOL (BASE-QUOTE) by BPS basis points from the start "
                        "(for SECONDS, or until cleared); repeatable")
    return p


class StartError(ValueError):
    """A start-up option the simulator could not apply (it exits with status 2)."""


def parse_drift(text: str) -> dict:
    """'kucoin:BTC-USDT:80[:30]' -> the body of POST /_sim/faults/drift."""
    parts = text.split(":")
    if len(parts) not in (3, 4) or not all(parts):
        raise ValueError(f"--drift {text!r:.60}: expected EXCHANGE:SYMBOL:BPS[:SECONDS]")
    body = {"exchange": parts[0], "symbol": parts[1], "bps": parts[2]}
    if len(parts) == 4:
        body["seconds"] = parts[3]
    return body


def config_from(args) -> Config:
    return Config(host=args.host, port=args.port, symbols=args.symbols, rate=args.rate, seed=args.seed,
                  max_lifetime=args.max_lifetime, binance_ping_interval=args.binance_ping_interval,
                  binance_pong_timeout=args.binance_pong_timeout, kucoin_ping_interval=args.kucoin_ping_interval,
                  kucoin_ping_timeout=args.kucoin_ping_timeout, weight_limit=args.weight_limit,
                  ban_seconds=args.ban_seconds, kucoin_pool=args.kucoin_pool, truth_max=args.truth_max,
                  truth_dir=args.truth_dir, truth_keep_hours=args.truth_keep_hours,
                  step_s=args.step, max_lag_s=args.max_lag)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.symbols < 5 or args.symbols > 20_000:
        print("cryptopipe sim: --symbols must be between 5 and 20000", file=sys.stderr)
        return 2
    if args.rate < 0:
        print("cryptopipe sim: --rate must be >= 0", file=sys.stderr)
        return 2
    try:
        drifts = [parse_drift(d) for d in args.drift]
    except ValueError as e:
        print(f"cryptopipe sim: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s sim %(levelname)s %(message)s")
    failed: list[str] = []

    def ready(sim) -> None:
        f = sim.faults
        if args.outage:
            f.set_outage(args.outage)
        if args.stall:
            f.set_stall(args.stall)
        if args.malformed_ratio:
            f.set_corrupt(ratio=args.malformed_ratio, kind="malformed")
        if args.truncated_ratio:
            f.set_corrupt(ratio=args.truncated_ratio, kind="truncated")
        if args.duplicate_ratio:
            f.set_duplicate(ratio=args.duplicate_ratio)
        if args.rest_429:
            f.set_rest(429, seconds=args.rest_429)
        if args.slow_rest:
            f.set_slow_rest(args.slow_rest, 10 ** 9)
        for text, body in zip(args.drift, drifts):
            try:
                sim.set_drift(body)
            except ValueError as e:
                raise StartError(f"--drift {text!r:.60}: {e}") from None
        from sim.startup import format_start_lines

        sys.stdout.write(format_start_lines(dict(sim.env(), SIM_PORT=str(sim.port))))
        sys.stdout.flush()

    async def run() -> None:
        task = asyncio.ensure_future(serve(config_from(args), ready))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass
        except StartError as e:
            failed.append(str(e))

    asyncio.run(run())
    if failed:
        print(f"cryptopipe sim: {failed[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
