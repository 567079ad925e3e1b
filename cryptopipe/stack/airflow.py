"""Airflow 3: metadata in the local Postgres, api-server / scheduler / dag-processor / triggerer
as separate supervisord programs (sized for 2 cores), DAGs and plugins served from the repo,
connections `crypto_postgres`, `crypto_s3`, `crypto_kafka`, and a generated admin login."""
from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

from cryptopipe.stack.component import Component, StackContext, port_open, program_block
from cryptopipe.stack.kafka_auth import client_env
from cryptopipe.stack.paths import AIRFLOW_PORT, KAFKA_PORT, POSTGRES_PORT, S3_PORT, repo_root
from cryptopipe.stack.postgres import dsn_for
from cryptopipe.stack.progress import StepFailed

PROGRAMS = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
ADMIN_USER = "admin"
AIRFLOW_KAFKA_IDENTITY = "airflow"


def airflow_bin(ctx: StackContext) -> str:
    return str(Path(ctx.python).parent / "airflow")


def airflow_env(ctx: StackContext) -> dict[str, str]:
    """The environment every Airflow process of the stack runs with."""
    home = ctx.paths.airflow_home
    pg = dsn_for(ctx, "airflow").replace("postgresql://", "postgresql+psycopg2://", 1)
    return {
        "AIRFLOW_HOME": str(home),
        "PYTHONPATH": str(repo_root()),
        "CRYPTOPIPE_HOME": str(ctx.paths.home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(repo_root() / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(repo_root() / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__FERNET_KEY": ctx.env["CRYPTOPIPE_AIRFLOW_FERNET_KEY"],
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{AIRFLOW_PORT}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(AIRFLOW_PORT),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{AIRFLOW_PORT}",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": ctx.env["CRYPTOPIPE_AIRFLOW_JWT_SECRET"],
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "5",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__WEBSERVER__EXPOSE_CONFIG": "False",
        # tasks that build Kafka clients from common.settings talk as `airflow`, not as admin
        **client_env(AIRFLOW_KAFKA_IDENTITY, ctx.env),
    }


def kafka_connection_extra(ctx: StackContext) -> dict[str, str]:
    """The crypto_kafka connection's extra: librdkafka settings as the `airflow` identity (what the
    supervisor DAG's KafkaAdminClientHook passes to its AdminClient)."""
    from common.kafka import connection_config
    from common.settings import Settings

    identity = {k.lower(): v for k, v in client_env(AIRFLOW_KAFKA_IDENTITY, ctx.env).items()}
    return connection_config(Settings(kafka_bootstrap_servers=f"127.0.0.1:{KAFKA_PORT}", **identity))


def connections(ctx: StackContext) -> dict:
    from common.settings import get_settings

    s = get_settings()
    return {
        "crypto_postgres": {"conn_type": "postgres", "host": "127.0.0.1", "port": POSTGRES_PORT, "schema": "cryptopipe",
                            "login": "cryptopipe", "password": ctx.env["CRYPTOPIPE_PG_PASSWORD"]},
        "crypto_s3": {"conn_type": "aws", "login": ctx.env["AWS_ACCESS_KEY_ID"],
                      "password": ctx.env["AWS_SECRET_ACCESS_KEY"],
                      "extra": json.dumps({"endpoint_url": f"http://127.0.0.1:{S3_PORT}", "region_name": s.s3_region,
                                           "bucket": s.s3_bucket})},
        "crypto_kafka": {"conn_type": "kafka", "extra": json.dumps(kafka_connection_extra(ctx))},
    }


class Airflow(Component):
    name = "airflow"
    program = "airflow-api-server"
    port = AIRFLOW_PORT
    always_listed = True
    start_timeout = 180              # db checks, the api-server's workers and a first scheduler heartbeat

    def programs(self, ctx: StackContext) -> tuple[str, ...]:
        return PROGRAMS

    def install(self, ctx: StackContext) -> None:
        if not Path(airflow_bin(ctx)).exists():
            raise StepFailed(f"{airflow_bin(ctx)} not found — run `make up` (scripts/bootstrap.sh installs Airflow)")

    def _run(self, ctx: StackContext, args: list[str], what: str, timeout: float = 300) -> None:
        log = ctx.paths.logs / "airflow-setup.log"
        env = {**os.environ, **airflow_env(ctx)}
        with open(log, "ab") as out:
            try:
                rc = subprocess.call([airflow_bin(ctx), *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                     timeout=timeout)
            except subprocess.TimeoutExpired:
                raise StepFailed(f"{what} timed out after {timeout:.0f}s", log)
        if rc != 0:
            raise StepFailed(f"{what} failed (exit {rc})", log)

    def prepare(self, ctx: StackContext) -> None:
        home = ctx.paths.airflow_home
        home.mkdir(parents=True, exist_ok=True)
        pw = home / "passwords.json"
        fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({ADMIN_USER: ctx.env["CRYPTOPIPE_AIRFLOW_ADMIN_PASSWORD"]}, f)
        migrated = home / ".migrated"
        if not migrated.exists() or migrated.read_text() != airflow_version(ctx):
            self._run(ctx, ["db", "migrate"], "airflow db migrate")
            migrated.write_text(airflow_version(ctx))
        conns = home / "connections.json"
        fd = os.open(conns, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(connections(ctx), f)
        self._run(ctx, ["connections", "import", "--overwrite", str(conns)], "creating Airflow connections")

    def program_sections(self, ctx: StackContext) -> str:
        env = airflow_env(ctx)
        cmds = {
            "airflow-api-server": f"{airflow_bin(ctx)} api-server",
            # log servers bind every interface (hard-coded): skipped; the api-server reads the local log folder
            "airflow-scheduler": f"{airflow_bin(ctx)} scheduler --skip-serve-logs",
            "airflow-dag-processor": f"{airflow_bin(ctx)} dag-processor",
            "airflow-triggerer": f"{airflow_bin(ctx)} triggerer --skip-serve-logs",
        }
        return "\n".join(program_block(name, cmd, log=ctx.paths.logs / f"{name}.log", environment=env,
                                       directory=str(ctx.paths.airflow_home), stopwaitsecs=30, startsecs=3)
                         for name, cmd in cmds.items())

    def program_section(self, ctx: StackContext) -> str:
        return self.program_sections(ctx)

    def healthy(self, ctx: StackContext) -> bool:
        if not port_open(AIRFLOW_PORT):
            return False
        with urllib.request.urlopen(f"http://127.0.0.1:{AIRFLOW_PORT}/api/v2/monitor/health", timeout=3) as r:
            body = json.load(r)
        return body.get("metadatabase", {}).get("status") == "healthy" and \
            body.get("scheduler", {}).get("status") == "healthy"

    def describe(self, ctx: StackContext) -> dict:
        return {"address": f"http://127.0.0.1:{AIRFLOW_PORT}", "login_user": ADMIN_USER,
                "login_password_file": str(ctx.paths.airflow_home / "passwords.json"),
                "use": f"open http://127.0.0.1:{AIRFLOW_PORT} and log in as {ADMIN_USER} "
                       f"(password in {ctx.paths.airflow_home / 'passwords.json'})"}


def airflow_version(ctx: StackContext) -> str:
    try:
        from importlib.metadata import version
        return version("apache-airflow")
    except Exception:
        return "unknown"


class AirflowRest:
    """A minimal client of Airflow's REST API (JWT from /auth/token), as the UI uses it."""

    def __init__(self, url: str, user: str, password: str):
        self.url = url.rstrip("/")
        body = json.dumps({"username": user, "password": password}).encode()
        req = urllib.request.Request(f"{self.url}/auth/token", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            self.token = json.load(r)["access_token"]

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        import urllib.error

        req = urllib.request.Request(f"{self.url}/api/v2{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def wait_parsed(self, dag_id: str, timeout: float = 120) -> dict:
        """Wait until the dag-processor has registered `dag_id`; returns the DAG."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            status, dag = self.call("GET", f"/dags/{dag_id}")
            if status == 200:
                return dag
            if time.monotonic() > deadline:
                raise StepFailed(f"Airflow has not parsed {dag_id} after {timeout:.0f}s (see import errors in the UI)")
            time.sleep(2)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        status, dag = self.call("PATCH", f"/dags/{dag_id}", {"is_paused": paused})
        if status != 200:
            raise StepFailed(f"could not {'pause' if paused else 'unpause'} {dag_id}: HTTP {status} {dag}")


DAG_IDS = ("crypto_stream_supervisor", "crypto_gap_detection", "crypto_backfill", "crypto_reconcile",
           "crypto_cross_check")


def rest_client(ctx: StackContext) -> AirflowRest:
    return AirflowRest(f"http://127.0.0.1:{AIRFLOW_PORT}", ADMIN_USER, ctx.env["CRYPTOPIPE_AIRFLOW_ADMIN_PASSWORD"])


def set_dags_paused(ctx: StackContext, paused: bool, dag_ids=DAG_IDS, timeout: float = 120) -> None:
    """Pause or unpause the project's DAGs once the dag-processor has registered them."""
    api = rest_client(ctx)
    for dag_id in dag_ids:
        if api.wait_parsed(dag_id, timeout)["is_paused"] != paused:
            api.set_paused(dag_id, paused)
