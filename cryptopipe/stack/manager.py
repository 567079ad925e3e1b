"""`cryptopipe stack up|down|clean|status`: bring the local stack up in order, idempotently."""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
import sys
import time

from cryptopipe.stack import config as stack_config
from cryptopipe.stack import scale, supervisor
from cryptopipe.stack.airflow import Airflow
from cryptopipe.stack.component import Component, StackContext
from cryptopipe.stack.kafka import Kafka
from cryptopipe.stack.paths import get_paths, python_bin
from cryptopipe.stack.postgres import Postgres, dsn_for
from cryptopipe.stack.progress import StepFailed, console, step, wait_until
from cryptopipe.stack.s3 import S3Proxy
from cryptopipe.stack.secrets import ensure_generated, read_env_file, write_env_file
from cryptopipe.stack.sim import Simulator, sim_endpoints

CORE: tuple[Component, ...] = (Postgres(), Kafka(), S3Proxy())
# every component a stack may run, in start order
ALL: tuple[Component, ...] = (*CORE, Simulator(), Airflow())
SIM_CONTROL = "SIM_CONTROL_URL"       # the bundled simulator's control API, in stack.env while source=sim


def make_context(source: str | None = None) -> StackContext:
    paths = get_paths()
    for d in (paths.home, paths.logs, paths.run, paths.cache):
        d.mkdir(parents=True, exist_ok=True)
    paths.home.chmod(0o700)
    if source is None:
        source = paths.source_file.read_text().strip() if paths.source_file.exists() else "live"
    env = ensure_generated(read_env_file(paths.env_file))
    return StackContext(paths=paths, env=env, source=source, python=python_bin())


def configure(ctx: StackContext, given: dict[str, str | None], *, source_given: bool) -> None:
    """ctx.env after this `up`: the remembered values, what it was given and the source's
    endpoints (cryptopipe/stack/config.py has the rules); StepFailed when the daemons would refuse
    a value."""
    endpoints = sim_endpoints() if ctx.source == "sim" else {}
    values = stack_config.merge(ctx.env, given, source_given=source_given, source_endpoints=endpoints)
    values.pop(SIM_CONTROL, None)
    if SIM_CONTROL in endpoints:
        values[SIM_CONTROL] = endpoints[SIM_CONTROL]
    try:
        stack_config.check(values)
    except stack_config.ConfigError as exc:
        raise StepFailed(f"not started: {exc}") from None
    ctx.env = values


def write_stack_env(ctx: StackContext) -> bool:
    """Write ctx.env and the values the stack owns (its ports, the admin's Kafka login) to
    stack.env; True when the file's content changed."""
    from cryptopipe.stack.kafka_auth import ADMIN, client_env
    from cryptopipe.stack.kafka import bootstrap_servers
    from cryptopipe.stack.paths import API_PORT, S3_PORT

    before = read_env_file(ctx.paths.env_file)
    values = dict(ctx.env)
    values.update({
        "POSTGRES_DSN": dsn_for(ctx, "cryptopipe"),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers(ctx),
        **client_env(ADMIN, ctx.env),      # tools and tests are admin; each daemon gets its own identity
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
        "S3_BUCKET": values.get("S3_BUCKET", "cryptopipe"),
        "SUPERVISOR_SOCKET": str(ctx.paths.supervisor_socket),
        "API_PORT": str(API_PORT),
    })
    ctx.env = values
    write_env_file(ctx.paths.env_file, values)
    ctx.paths.source_file.write_text(ctx.source)
    from cryptopipe.stack.paths import PORT_OFFSET

    (ctx.paths.home / "port_offset").write_text(f"{PORT_OFFSET}\n")
    from common.settings import get_settings

    get_settings.cache_clear()
    return values != before


def components(ctx: StackContext, *, with_airflow: bool) -> list[Component]:
    comps: list[Component] = list(CORE)
    if ctx.source == "sim":
        comps.append(Simulator())
    if with_airflow:
        comps.append(Airflow())
    return comps


def _all_sections(ctx: StackContext) -> list[str]:
    # every component the stack may run is declared, so supervisord's config does not change
    # between `stack up --core` (tests) and a full `make up`
    sections = [c.program_section(ctx) for c in CORE]
    if ctx.source == "sim":
        sections.append(Simulator().program_section(ctx))
    sections.append(Airflow().program_section(ctx))
    return sections


def apply_supervisor_config(ctx: StackContext) -> None:
    """supervisord running with the programs ctx declares (its source decides whether `sim` is one)."""
    supervisor.ensure_running(ctx, supervisor.render_conf(ctx, _all_sections(ctx)))


def _record_profile(ctx: StackContext, programs: list[str]) -> None:
    """Remember which programs the last `up` meant to run, so `status` judges health by them."""
    path = ctx.paths.home / "profile.json"
    wanted = set(json.loads(path.read_text())) if path.exists() else set()
    path.write_text(json.dumps(sorted(wanted | set(programs))))


def expected_programs(ctx: StackContext) -> set[str]:
    path = ctx.paths.home / "profile.json"
    return set(json.loads(path.read_text())) if path.exists() else set()


@contextmanager
def stack_lock(ctx: StackContext):
    """One `up`/`down` at a time per stack folder (tests, make and helpers may call concurrently)."""
    import fcntl

    with open(ctx.paths.run / "stack.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def bring_up(ctx: StackContext, comps: list[Component]) -> None:
    with stack_lock(ctx):
        _bring_up(ctx, comps)


def _bring_up(ctx: StackContext, comps: list[Component]) -> None:
    _record_profile(ctx, [p for c in comps for p in c.programs(ctx)])
    with step("supervisord"):
        apply_supervisor_config(ctx)
    for comp in comps:
        with step(f"{comp.name}: install"):
            comp.install(ctx)
        with step(f"{comp.name}: prepare"):
            comp.prepare(ctx)
        check_port_free(ctx, comp)
        with step(f"{comp.name}: start"):
            for program in comp.programs(ctx):
                supervisor.start_program(ctx, program, comp.log_path(ctx))
            wait_until(lambda: comp.healthy(ctx), comp.start_timeout,
                       f"{comp.name} on port {comp.port}", comp.log_path(ctx))
        with step(f"{comp.name}: initialise"):
            comp.after_start(ctx)


def port_owner(port: int) -> str:
    import psutil

    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == "LISTEN" and conn.laddr.port == port and conn.pid:
                proc = psutil.Process(conn.pid)
                return f"pid {conn.pid} ({' '.join(proc.cmdline())[:120]})"
    except (psutil.Error, OSError):
        pass
    return "another process"


def check_port_free(ctx: StackContext, comp: Component) -> None:
    """A component that is not running under our supervisord must find its port free."""
    from cryptopipe.stack.component import port_open

    if comp.port is None:
        return
    state = supervisor.program_states(ctx).get(comp.program, {}).get("state")
    if state not in ("RUNNING", "STARTING", "BACKOFF") and port_open(comp.port):
        raise StepFailed(f"port {comp.port} for {comp.name} is already taken by {port_owner(comp.port)}; "
                         "stop it (or the other stack using it) and run again")


def up(source: str | None = None, *, core_only: bool = False, with_airflow: bool = True,
       with_pipeline: bool = True, sim_args: str | None = None, env: dict[str, str | None] | None = None) -> int:
    """Bring the stack up (`core_only`: Kafka, Postgres and S3, migrated, topics and bucket made).
    `source`: live | sim, None keeps the remembered one. `env`: settings to remember in stack.env
    for every program ("" or None forgets one); the `stack up` command passes its caller's settings
    variables here, a program calling up() passes what it means (its own environment plays no part)."""
    started = time.monotonic()
    ctx = make_context(source)
    if sim_args is not None:
        ctx.env["CRYPTOPIPE_SIM_ARGS"] = sim_args
    configure(ctx, dict(env or {}), source_given=source is not None)
    stopped = stop_streaming_daemons(ctx) if write_stack_env(ctx) else []
    if ctx.source == "live" and not core_only and with_pipeline:
        warn_if_exchanges_unreachable(ctx)
    comps = list(CORE) if core_only else components(ctx, with_airflow=with_airflow)
    bring_up(ctx, comps)
    daemons = supervisor.PIPELINE_PROGRAMS if with_pipeline and not core_only else stopped
    if daemons:
        _record_profile(ctx, [p for p in supervisor.pipeline_processes(ctx)
                              if scale.program_of_process(p) in daemons])
        with step("streaming daemons"):
            for program in daemons:
                supervisor.start_program(ctx, program, ctx.paths.logs / f"{program}.log")
    if with_airflow and not core_only:
        from cryptopipe.stack.airflow import set_dags_paused

        with step("airflow: DAGs parsed and unpaused"):
            set_dags_paused(ctx, False)
    console.print(f"[bold green]stack up[/bold green] ({time.monotonic() - started:.1f}s, source={ctx.source}) — "
                  "`make status` shows addresses, logins and the exchange endpoints")
    return 0


def stop_streaming_daemons(ctx: StackContext) -> list[str]:
    """The streaming daemons read stack.env when they start: after it changed, the running ones
    stop here (every process, whatever count they ran with) and `up` starts them again once
    supervisord has the new config (Airflow's tasks read it at each run; the services take nothing
    from it). Returns the programs that were running."""
    from concurrent.futures import ThreadPoolExecutor

    states = supervisor.program_states(ctx)
    running = [name for name, s in states.items()
               if scale.program_of_process(name) in supervisor.PIPELINE_PROGRAMS
               and s["state"] in ("RUNNING", "STARTING", "BACKOFF")]
    if not running:
        return []
    with step(f"stop {', '.join(running)}: the settings changed"), ThreadPoolExecutor(len(running)) as pool:
        for done in [pool.submit(supervisor.stop_program, ctx, name) for name in running]:
            done.result()
    return sorted({scale.program_of_process(name) for name in running})


def warn_if_exchanges_unreachable(ctx: StackContext) -> None:
    import socket
    from urllib.parse import urlsplit

    for name, url in effective_endpoints(ctx).items():
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
        try:
            socket.create_connection((parts.hostname, port), timeout=3).close()
        except (OSError, ValueError) as exc:
            console.print(f"[yellow]! {name} {url} is unreachable ({exc}); the extractors will keep retrying. "
                          "On a machine without internet run `make up SOURCE=sim`.[/yellow]")
            return


def effective_endpoints(ctx: StackContext) -> dict[str, str]:
    """{variable: URL} of every exchange endpoint, as the daemons read them from stack.env."""
    settings = stack_config.settings_from(ctx.env)
    return {var: str(getattr(settings, var.lower())) for var in stack_config.endpoint_variables()}


def down() -> int:
    ctx = make_context()
    if not supervisor.running(ctx):
        console.print("stack is not running")
        return 0
    # the pipeline first, then every component in the reverse of its start order
    order = [*supervisor.pipeline_processes(ctx),
             *(p for comp in reversed(ALL) for p in comp.programs(ctx))]
    states = supervisor.program_states(ctx)
    for program in order:
        if states.get(program, {}).get("state") in ("RUNNING", "STARTING", "BACKOFF"):
            with step(f"stop {program}"):
                supervisor.stop_program(ctx, program)
    with stack_lock(ctx), step("stop supervisord"):
        supervisor.shutdown(ctx)
        (ctx.paths.home / "profile.json").unlink(missing_ok=True)
    return 0


def clean() -> int:
    down()
    ctx = make_context()
    pg_root = Postgres().root(ctx)
    with step(f"remove {ctx.paths.home}"):
        if pg_root != ctx.paths.pg_link and pg_root.exists():
            shutil.rmtree(pg_root)
        shutil.rmtree(ctx.paths.home, ignore_errors=True)
    return 0


def status() -> dict:
    ctx = make_context()
    states = supervisor.program_states(ctx)
    expected = expected_programs(ctx)
    comps = {}
    for comp in ALL:
        if not any(p in states for p in comp.programs(ctx)) and not comp.always_listed:
            continue
        # a component of several programs is as well as its worst program
        program_states = [states.get(p, {}).get("state", "ABSENT") for p in comp.programs(ctx)]
        state = next((s for s in program_states if s != "RUNNING"), "RUNNING")
        try:
            healthy = bool(comp.healthy(ctx)) if state == "RUNNING" else False
        except Exception:
            healthy = False
        comps[comp.name] = {"state": state, "healthy": healthy, "expected": any(p in expected for p in comp.programs(ctx)),
                           **comp.describe(ctx)}
    if "api" in states:
        from cryptopipe.stack.api import api_status

        comps["api"] = api_status(states["api"]["state"], "api" in expected)
    return {
        "source": ctx.source,
        "configuration": configuration(ctx),
        "supervisord": {"running": supervisor.running(ctx), "socket": str(ctx.paths.supervisor_socket)},
        "components": comps,
        "programs": {name: {"state": s["state"], "pid": s["pid"], "uptime_s": s["uptime_s"],
                            "expected": name in expected}
                     for name, s in states.items()},
        "healthy": supervisor.running(ctx) and bool(expected) and all(
            states.get(p, {}).get("state") == "RUNNING" for p in expected) and all(
            c["healthy"] for c in comps.values() if c["expected"]),
        "env_file": str(ctx.paths.env_file),
        "logs": str(ctx.paths.logs),
    }


def configuration(ctx: StackContext) -> dict:
    """What the daemons and Airflow's tasks run with: the exchange endpoints, the symbol filter
    ([] = every symbol), the settings remembered in stack.env, and the settings variables of the
    caller's environment that differ (commands run there use them; the stack does not)."""
    import os

    remembered = {k: ctx.env[k] for k in stack_config.passable_variables() if k in ctx.env}
    return {"endpoints": effective_endpoints(ctx),
            "symbols": list(stack_config.settings_from(ctx.env).symbols),
            "remembered": remembered,
            "environment_overrides": sorted(k for k, v in stack_config.from_environment(os.environ).items()
                                            if remembered.get(k) != v)}


def fail(exc: StepFailed) -> int:
    print(f"cryptopipe stack: {exc}", file=sys.stderr)
    return 1
