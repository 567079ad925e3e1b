"""Configuration given to `stack up` (what `make up` runs) reaches the daemons and the tools and is
remembered (README, "Configuration"): a second simulator, given through the endpoint variables,
is the one the extractors of both exchanges and a backfill talk to; SYMBOLS narrows what the
extractors subscribe to; a later `stack up` given nothing keeps all of it and restarts nothing."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from tests.plugins.pipeline import wait_for

pytestmark = pytest.mark.integration

SYMBOLS = ["BTC-USDT", "ETH-USDT"]
EXCHANGES = ("binance", "kucoin")


def cli_env(ctx, **extra) -> dict[str, str]:
    """A shell that names only the stack (no settings of the test process leak in)."""
    import os

    keep = ("PATH", "HOME", "LANG", "CRYPTOPIPE_HOME", "CRYPTOPIPE_PORT_OFFSET", "CRYPTOPIPE_CACHE", "XDG_CACHE_HOME",
            "CRYPTOPIPE_API_PORT", "JAVA_HOME")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["CRYPTOPIPE_HOME"] = str(ctx.paths.home)
    return {**env, **extra}


def stack_up(ctx, *args: str, **variables: str) -> None:
    out = subprocess.run([sys.executable, "-m", "cryptopipe", "stack", "up", "--no-airflow", *args],
                         env=cli_env(ctx, **variables), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"stack up failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"


def open_subscriptions(sim, exchange: str) -> set[str]:
    return {s for c in sim.control.connections(exchange) if c["closed_ms"] is None for s in c["subscriptions"]}


def planned_subscriptions(exchange: str, symbols=SYMBOLS) -> set[str]:
    from common.exchanges import plug

    p = plug(exchange)
    return {s for shard in p.plan_shards(symbols, [], p.MAX_PER_CONNECTION) for s in shard}


def program_pids(ctx) -> dict[str, int]:
    from cryptopipe.stack import supervisor

    return {p: s["pid"] for p, s in supervisor.program_states(ctx).items() if p in supervisor.PIPELINE_PROGRAMS}


@pytest.fixture
def restored_stack(stack_ctx):
    """The stack's settings, source and running programs as they were before the test."""
    from cryptopipe.stack import supervisor
    from cryptopipe.stack.manager import make_context
    from cryptopipe.stack.secrets import write_env_file, read_env_file

    paths = stack_ctx.paths
    profile = paths.home / "profile.json"
    before = (read_env_file(paths.env_file), paths.source_file.read_text() if paths.source_file.exists() else None,
              profile.read_text() if profile.exists() else None)
    running = {p for p, s in supervisor.program_states(stack_ctx).items() if s["state"] == "RUNNING"}
    yield make_context()
    ctx = make_context()
    for program in (*supervisor.PIPELINE_PROGRAMS, "sim"):
        supervisor.stop_program(ctx, program)
    env, source, profile_text = before
    write_env_file(paths.env_file, env)
    if source is None:
        paths.source_file.unlink(missing_ok=True)
    else:
        paths.source_file.write_text(source)
    if profile_text is None:
        profile.unlink(missing_ok=True)
    else:
        profile.write_text(profile_text)
    # supervisord's programs as the restored source declares them (a live stack has no `sim`)
    from cryptopipe.stack import manager

    ctx = make_context()
    manager.apply_supervisor_config(ctx)
    for program in ("sim", *supervisor.PIPELINE_PROGRAMS):
        if program in running:
            supervisor.start_program(ctx, program)
    from common.settings import get_settings

    get_settings.cache_clear()


def run_backfill(env: dict[str, str], exchange: str, start: datetime, end: datetime) -> dict:
    out = subprocess.run([sys.executable, "-m", "cryptopipe", "backfill", "--exchange", exchange,
                          "--symbols", "BTC-USDT", "--start", f"{start:%Y-%m-%dT%H:%MZ}", "--end", f"{end:%Y-%m-%dT%H:%MZ}",
                          "--force", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"backfill {exchange} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return json.loads(out.stdout)


def test_endpoints_and_symbols_given_to_stack_up_reach_the_daemons_and_are_remembered(
        restored_stack, sim_factory, pg):
    from cryptopipe.stack import supervisor
    from cryptopipe.stack.airflow import airflow_env
    from cryptopipe.stack.secrets import read_env_file
    from cryptopipe.stack.sim import sim_endpoints
    from sim.control import SimControl

    ctx = restored_stack
    second = sim_factory(symbols=20, rate=100, seed=99)
    given = {k: second.url(k) for k in ("BINANCE_WS_URL", "BINANCE_REST_URL", "KUCOIN_REST_URL")}
    stack_up(ctx, "--source", "sim", **given, SYMBOLS=",".join(SYMBOLS))

    remembered = read_env_file(ctx.paths.env_file)
    assert {k: remembered[k] for k in given} == given and remembered["SYMBOLS"] == ",".join(SYMBOLS)
    assert ctx.paths.source_file.read_text() == "sim"

    bundled = SimControl(sim_endpoints()["SIM_CONTROL_URL"])
    bundled_calls = dict(bundled.status()["rest_calls"])

    # both extractors on the second simulator, subscribed to the symbol filter only; the
    # transformer loads Binance's market list from it (the daemons' only Binance REST call)
    for exchange in EXCHANGES:
        wait_for(lambda: open_subscriptions(second, exchange) == planned_subscriptions(exchange), 90,
                 f"extract-{exchange} subscribed to {SYMBOLS} on the second simulator")
    wait_for(lambda: second.control.status()["rest_calls"]["binance"] > 0, 90,
             "the transformer's market list from the second simulator")
    wait_for(lambda: not bundled.status()["connections"], 30, "no connection left on the bundled simulator")

    # a backfill from a shell and one in the environment of Airflow's tasks fetch from the second simulator
    calls = dict(second.control.status()["rest_calls"])
    end = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=5)
    start = end - timedelta(minutes=5)
    daemon_env = supervisor.supervisord_env(ctx)
    run_backfill(daemon_env, "binance", start, end)
    run_backfill({**daemon_env, **airflow_env(ctx)}, "kucoin", start, end)
    after = second.control.status()["rest_calls"]
    assert all(after[e] > calls[e] for e in EXCHANGES), (calls, after)
    assert bundled.status()["rest_calls"] == bundled_calls
    with pg.cursor() as cur:
        for exchange in EXCHANGES:
            start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
            truth = {c["open_ms"]: Decimal(c["close"]) for c in
                     second.control.candles(exchange, "BTC-USDT", start_ms, end_ms)
                     if c["trades"] and c["open_ms"] < end_ms}
            cur.execute("""SELECT (extract(epoch FROM open_time) * 1000)::bigint, close FROM candles_1m
                           WHERE exchange = %s AND symbol = 'BTC-USDT' AND source = 'rest'
                             AND open_time >= %s AND open_time < %s""", (exchange, start, end))
            stored = {ms: close for ms, close in cur.fetchall() if ms in truth}
            assert truth and stored == truth, f"{exchange}: candles are not the second simulator's"

    # a later `stack up` given nothing keeps the source, the endpoints and SYMBOLS, and restarts nothing
    pids = program_pids(ctx)
    stack_up(ctx)
    again = read_env_file(ctx.paths.env_file)
    assert {k: again[k] for k in given} == given and again["SYMBOLS"] == ",".join(SYMBOLS)
    assert ctx.paths.source_file.read_text() == "sim"
    assert program_pids(ctx) == pids
    time.sleep(2)
    for exchange in EXCHANGES:
        assert open_subscriptions(second, exchange) == planned_subscriptions(exchange)

    # status says what the daemons run with
    # (a shell's own setting is named, not shown as the daemons')
    out = subprocess.run([sys.executable, "-m", "cryptopipe", "stack", "status", "--json"],
                         env=cli_env(ctx, BINANCE_WS_URL="ws://127.0.0.1:1/elsewhere"), capture_output=True,
                         text=True, timeout=60)
    cfg = json.loads(out.stdout)["configuration"]
    assert cfg["endpoints"] == given and cfg["symbols"] == SYMBOLS
    assert cfg["environment_overrides"] == ["BINANCE_WS_URL"]
    table = subprocess.run([sys.executable, "-m", "cryptopipe", "stack", "status"],
                           env={**cli_env(ctx), "COLUMNS": "250"}, capture_output=True, text=True, timeout=60)
    for url in given.values():
        assert url in table.stdout
    assert ",".join(SYMBOLS) in table.stdout

    # a changed setting restarts the running daemons, which take it; the rest stays remembered
    stack_up(ctx, SYMBOLS="BTC-USDT")
    assert {k: read_env_file(ctx.paths.env_file)[k] for k in given} == given
    assert all(program_pids(ctx)[p] != pids[p] for p in pids), (pids, program_pids(ctx))
    for exchange in EXCHANGES:
        wait_for(lambda: open_subscriptions(second, exchange) == planned_subscriptions(exchange, ["BTC-USDT"]), 90,
                 f"extract-{exchange} subscribed to BTC-USDT alone on the second simulator")
