"""`python -m sim.bench`: ticks/s the simulator writes on one core, with clients draining the sockets.

Starts `python -m sim` as a subprocess pinned to one CPU (the clients run in this process, on
another CPU when there is one), connects KuCoin `/market/ticker:all` and/or Binance
`!miniTicker@arr` + per-symbol `@trade` clients, lets it warm up, then measures over a window:
ticks written by the simulator (its own counter), trades it took from the market (KuCoin's
ticker pushes only each symbol's last trade per 100 ms, so ticks < trades), ticks received by the
clients, and the simulator's CPU use. Prints a table and one JSON line (`BENCH {...}`); asserts nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request

import aiohttp
import psutil

from sim.startup import read_start_env


ENDS: list[str] = []   # why a client stopped early, if one did


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


async def _kucoin_client(env: dict, counter: dict, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(env["KUCOIN_REST_URL"] + "/api/v1/bullet-public") as r:
            bullet = (await r.json())["data"]
        server = bullet["instanceServers"][0]
        url = f"{server['endpoint']}?token={bullet['token']}&connectId=bench"
        async with session.ws_connect(url, max_msg_size=0) as ws:
            await ws.send_str(json.dumps({"id": 1, "type": "subscribe", "topic": "/market/ticker:all",
                                          "response": True}))
            last_ping = time.monotonic()
            while not stop.is_set():
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    ENDS.append(f"kucoin client: {msg.type.name} {msg.data!r:.100} {msg.extra!r:.100}")
                    break
                if msg.data.startswith('{"topic"'):
                    counter["kucoin"] += 1
                if time.monotonic() - last_ping > 5:
                    last_ping = time.monotonic()
                    await ws.send_str('{"id":"p","type":"ping"}')


async def _binance_client(env: dict, counter: dict, stop: asyncio.Event, streams: list[str]) -> None:
    url = env["BINANCE_WS_URL"] + "/stream?streams=" + "/".join(streams)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, max_msg_size=0) as ws:
            while not stop.is_set():
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    ENDS.append(f"binance client: {msg.type.name} {msg.data!r:.100}")
                    break
                d = msg.data
                counter["binance"] += d.count('"e":"24hrMiniTicker"') + d.count('"e":"trade"')


async def _run_clients(env, args, counter, stop):
    tasks = []
    if args.scenario in ("kucoin", "both"):
        tasks += [asyncio.create_task(_kucoin_client(env, counter, stop)) for _ in range(args.clients)]
    if args.scenario in ("binance", "both"):
        syms = [s["exchange_symbol"].lower() for s in _get(env["SIM_CONTROL_URL"] + "/symbols?exchange=binance")["symbols"]
                if s["status"] == "TRADING"][: args.trade_streams]
        streams = ["!miniTicker@arr"] + [f"{s}@trade" for s in syms]
        tasks += [asyncio.create_task(_binance_client(env, counter, stop, streams)) for _ in range(args.clients)]
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def run(args) -> dict:
    cmd = [sys.executable, "-m", "sim", "--port", "0", "--symbols", str(args.symbols), "--rate", str(args.rate),
           "--truth-max", str(args.truth_max)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        env = read_start_env(proc)
        ps = psutil.Process(proc.pid)
        cpus = os.sched_getaffinity(0)
        if len(cpus) > 1:
            sim_cpu = min(cpus)
            ps.cpu_affinity([sim_cpu])
            psutil.Process().cpu_affinity(sorted(cpus - {sim_cpu}))
        counter = {"kucoin": 0, "binance": 0}
        result = {}

        async def main():
            stop = asyncio.Event()
            clients = asyncio.create_task(_run_clients(env, args, counter, stop))
            await asyncio.sleep(args.warmup)
            s0, c0, t0 = _get(env["SIM_CONTROL_URL"] + "/status"), dict(counter), time.monotonic()
            cpu0 = ps.cpu_times()
            await asyncio.sleep(args.seconds)
            s1, c1, t1 = _get(env["SIM_CONTROL_URL"] + "/status"), dict(counter), time.monotonic()
            cpu1 = ps.cpu_times()
            stop.set()
            await clients
            dt = t1 - t0
            cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / dt
            result.update({
                "scenario": args.scenario, "symbols": args.symbols, "rate_per_exchange": args.rate,
                "clients": args.clients, "seconds": round(dt, 2),
                "sim_ticks_out_per_s": round((s1["ticks_out"] - s0["ticks_out"]) / dt),
                # trades the engine took from the market: tickers sample them, trade feeds carry all
                "sim_trades_per_s": round((sum(s1["trades_in"].values()) - sum(s0["trades_in"].values())) / dt),
                "client_ticks_per_s": round(sum(c1[k] - c0[k] for k in c1) / dt),
                "client_ticks_per_s_by_exchange": {k: round((c1[k] - c0[k]) / dt) for k in c1},
                "sim_cpu_cores": round(cpu, 2),
                # what one fully available core would write (the machine may be shared)
                "sim_ticks_per_cpu_second": round((s1["ticks_out"] - s0["ticks_out"]) / dt / cpu) if cpu > 0 else None, "sim_rss_mb": round(ps.memory_info().rss / 2 ** 20),
                "sim_overload_skips": s1["overload_skips"] - s0["overload_skips"],
                "max_queued_batches": max([c["queued_batches"] for c in s1["connections"]] or [0]),
                "truth_records": s1["truth"]["records"], "clients_ended_early": list(ENDS)})

        asyncio.run(main())
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sim.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", choices=("kucoin", "binance", "both"), default="kucoin")
    p.add_argument("--symbols", type=int, default=2000)
    p.add_argument("--rate", type=float, default=60_000, help="trades/s per exchange")
    p.add_argument("--clients", type=int, default=1, help="clients per exchange")
    p.add_argument("--trade-streams", type=int, default=200, help="Binance @trade streams per client")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--truth-max", type=int, default=300_000)
    return p


def measure(**options) -> dict:
    """The figures as a dict, e.g. measure(scenario="both", rate=30000, seconds=10)."""
    argv = []
    for k, v in options.items():
        argv += ["--" + k.replace("_", "-"), str(v)]
    return run(parser().parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    r = run(args)
    width = max(len(k) for k in r)
    for k, v in r.items():
        print(f"{k:<{width}}  {v}")
    print("BENCH " + json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
